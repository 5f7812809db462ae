//! The strategy seam: [`MixtureStrategy`], the one interface every way of choosing the mixture
//! implements, and [`Strategy`], the closed set the runtime runs, checkpoints and replays.
//!
//! An update has two halves, so that reading the statistics (which may keep state, such as the
//! MoS EMA, and may cost a cosine over every embedding) runs in the reward actor while the
//! scheduler applies updates strictly in order:
//! - `estimate`: one interval's statistics into the update's input ([`UpdateInput`]: the raw
//!   and the smoothed rewards). It runs on the estimator's copy of the strategy.
//! - `apply`: the input into the next mixture, all or nothing. It runs on the scheduler's copy,
//!   and it is what `replay` re-runs from the input that `mixture.jsonl` records.
//!
//! A new strategy is a type implementing [`MixtureStrategy`] in its own file, a variant of
//! [`Strategy`] and a case in [`Strategy::new`]; the training loop, the actors, the checkpoint
//! code, `replay` and the service only call the methods below.

use serde::{Deserialize, Serialize};

use super::{MixtureError, MosScheduler, ProbeInput, StartRecord, UpdateRecord};
use crate::config::{RewardKind, SchedulerConfig, Strategy as StrategyKind};

/// What a strategy's updates read, so that the trainer computes only that.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Needs {
    /// A probe pass over the fixed probe sets at every update boundary, read by this reward
    /// family (with the theta_0 perplexities computed once at start-up). `None`: no probe pass
    /// and no reward actor; the trainer sends the scheduler a plain tick at each boundary.
    pub probe: Option<RewardKind>,
}

/// The input of one learned update, as `mixture.jsonl` records it (`reward`, `raw`,
/// `smoothed` of an [`UpdateRecord`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateInput {
    /// The reward family that produced the rewards.
    pub reward: RewardKind,
    /// The reward of each dataset before smoothing.
    pub raw: Vec<f64>,
    /// What the update uses: the smoothed rewards (equal to `raw` without an EMA).
    pub smoothed: Vec<f64>,
}

impl UpdateInput {
    /// The input a logged update used; `None` for a tick or a static strategy's publish,
    /// which changed nothing.
    pub fn from_record(record: &UpdateRecord) -> Option<UpdateInput> {
        record.reward.map(|reward| UpdateInput {
            reward,
            raw: record.raw.clone(),
            smoothed: record.smoothed.clone(),
        })
    }
}

/// One way of choosing the mixture. Implementations are plain, deterministic maths (the module
/// contract of `mixture`): equal inputs on equal states give bit-identical outputs, and a
/// failed call leaves the state untouched.
pub trait MixtureStrategy {
    /// The statistics the trainer must gather for an update.
    fn needs(&self) -> Needs;

    /// The current mixture (one probability per dataset, summing to 1).
    fn probs(&self) -> Vec<f64>;

    /// Updates applied so far.
    fn updates(&self) -> u64;

    /// Whether a checkpoint must store this strategy. A strategy without state (a static
    /// mixture) is rebuilt from the config on resume instead, so an edited setting applies.
    fn has_state(&self) -> bool;

    /// One interval's probe statistics into the update's input (may advance state such as an
    /// EMA). Fails, changing nothing, on statistics the strategy cannot use.
    fn estimate(&mut self, input: &ProbeInput) -> Result<UpdateInput, MixtureError>;

    /// The input of an update at a boundary with no probe statistics (a tick), for a strategy
    /// that learns without them; `None` keeps the mixture. It runs on the scheduler's copy, and
    /// its result is recorded like any other input, so `replay` re-applies it.
    fn tick(&mut self) -> Option<UpdateInput> {
        None
    }

    /// Applies an update's input and returns the new mixture. All or nothing: the new state is
    /// computed on a copy and committed only if every part of it is sound (for MoS: rewards in
    /// their accepted range, everything finite, a scorer that can still move, no probability of
    /// exactly 0; see `MosScheduler::update`); on an error the state is as before.
    fn apply(&mut self, input: &UpdateInput) -> Result<Vec<f64>, MixtureError>;

    /// Whether the mixture the state implies is finite (the service refuses an update that
    /// would leave it otherwise).
    fn is_finite(&self) -> bool {
        self.probs().iter().all(|x| x.is_finite())
    }
}

/// A static mixture (uniform, proportional, temperature, fixed): nothing to learn, so every
/// update publishes it again (every strategy goes through the same publish path and log).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StaticMixture {
    weights: Vec<f64>,
}

impl StaticMixture {
    /// The mixture `weights` (already normalised, see [`super::static_mixture`]).
    pub fn new(weights: Vec<f64>) -> Self {
        Self { weights }
    }
}

impl MixtureStrategy for StaticMixture {
    fn needs(&self) -> Needs {
        Needs { probe: None }
    }
    fn probs(&self) -> Vec<f64> {
        self.weights.clone()
    }
    fn updates(&self) -> u64 {
        0
    }
    fn has_state(&self) -> bool {
        false
    }
    fn estimate(&mut self, _input: &ProbeInput) -> Result<UpdateInput, MixtureError> {
        Err(MixtureError::NotLearned)
    }
    fn apply(&mut self, _input: &UpdateInput) -> Result<Vec<f64>, MixtureError> {
        Err(MixtureError::NotLearned)
    }
}

impl MixtureStrategy for MosScheduler {
    fn needs(&self) -> Needs {
        Needs {
            // The constant-reward control reads nothing: it learns from ticks.
            probe: match self.reward_kind() {
                RewardKind::Constant => None,
                kind => Some(kind),
            },
        }
    }
    fn tick(&mut self) -> Option<UpdateInput> {
        // Every reward 1, and no EMA: an average of ones is one, so smoothing would only delay
        // the same input.
        (self.reward_kind() == RewardKind::Constant).then(|| {
            let ones = vec![1.0; self.n_datasets()];
            UpdateInput {
                reward: RewardKind::Constant,
                raw: ones.clone(),
                smoothed: ones,
            }
        })
    }
    fn probs(&self) -> Vec<f64> {
        MosScheduler::probs(self)
    }
    fn updates(&self) -> u64 {
        MosScheduler::updates(self)
    }
    fn has_state(&self) -> bool {
        true
    }
    fn estimate(&mut self, input: &ProbeInput) -> Result<UpdateInput, MixtureError> {
        let outcome = self.rewards_from_probes(input)?;
        Ok(UpdateInput {
            reward: self.reward_kind(),
            raw: outcome.raw,
            smoothed: outcome.smoothed,
        })
    }
    fn apply(&mut self, input: &UpdateInput) -> Result<Vec<f64>, MixtureError> {
        // The accepted range and the scaling of large rewards apply to every caller of the
        // seam (actors, service, replay) alike, so a refused or scaled update replays the same.
        self.apply_rewards(input.reward, &input.smoothed)
    }
    fn is_finite(&self) -> bool {
        // The logits, not only the softmax: a NaN scorer's softmax falls back to uniform, which
        // would look like a valid mixture.
        self.scorer().logits().iter().all(|x| x.is_finite())
    }
}

/// The strategies the runtime runs: what the scheduler actor, the reward actor, the checkpoint,
/// `replay` and the service hold.
///
/// Serialised externally tagged (`{"Mos": {...}}`); a checkpoint written before the seam stored
/// a bare MoS scheduler, which still deserialises (as `Mos`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub enum Strategy {
    /// A static mixture.
    Static(StaticMixture),
    /// The learned MoS mixture (and MoSpec).
    Mos(Box<MosScheduler>),
}

impl Strategy {
    /// The strategy `settings.strategy` names, over datasets of the given training-split
    /// sizes. `static_prior` is the static mixture the run computed (`static_mixture`, which
    /// needs the fixed weights); MoS starts from its own `q_tau` instead. `target` is the MoSpec
    /// target's index and `seed` the scheduler's RNG stream.
    pub fn new(
        settings: &SchedulerConfig,
        sizes: &[u64],
        target: Option<usize>,
        seed: u64,
        static_prior: &[f64],
    ) -> Result<Self, MixtureError> {
        Ok(match settings.strategy {
            StrategyKind::Mos => {
                Strategy::Mos(Box::new(MosScheduler::new(settings, sizes, target, seed)?))
            }
            StrategyKind::Uniform
            | StrategyKind::Proportional
            | StrategyKind::Temperature
            | StrategyKind::Fixed => Strategy::Static(StaticMixture::new(static_prior.to_vec())),
        })
    }

    /// The strategy a `mixture.jsonl` start record describes, in its initial state: what
    /// `replay` re-runs.
    pub fn from_start(start: &StartRecord) -> Result<Self, MixtureError> {
        Self::new(
            &start.scheduler,
            &start.sizes,
            start.target,
            start.seed,
            &start.prior,
        )
    }

    /// The same strategy restarted from the mixture `p` (a resumed run whose dataset list
    /// changed: the old mixture, remapped by name, is the start). Learned state (scorer moments,
    /// EMA, update count) starts fresh.
    pub fn restarted_from(
        &self,
        settings: &SchedulerConfig,
        p: &[f64],
        target: Option<usize>,
        seed: u64,
    ) -> Result<Self, MixtureError> {
        Ok(match self {
            Strategy::Static(_) => Strategy::Static(StaticMixture::new(p.to_vec())),
            Strategy::Mos(_) => Strategy::Mos(Box::new(MosScheduler::from_mixture(
                settings, p, target, seed,
            )?)),
        })
    }

    /// Whether the state could still take an update: every part finite and the scorer able to
    /// move (see `MosScheduler::check_state`). A static mixture always can. Checked when a
    /// checkpoint is resumed, because a state written by an older build after an absurd reward
    /// would otherwise refuse every later update.
    pub fn check_state(&self) -> Result<(), MixtureError> {
        match self {
            Strategy::Static(_) => Ok(()),
            Strategy::Mos(m) => m.check_state(),
        }
    }

    /// The mixture after the logged update `record`, from this strategy's state before it: the
    /// recorded input applied, or the mixture kept for a tick and for a refused input (as the
    /// scheduler actor keeps it). Returns whether the strategy learned from it.
    pub fn replay(&mut self, record: &UpdateRecord) -> (Vec<f64>, bool) {
        match UpdateInput::from_record(record) {
            // A static mixture learns nothing from an input; any other strategy applies it (a
            // refused input keeps the mixture, as the scheduler actor keeps it).
            Some(input) => match self.apply(&input) {
                Ok(next) => (next, true),
                Err(MixtureError::NotLearned) => (self.probs(), false),
                Err(_) => (self.probs(), true),
            },
            None => (self.probs(), false),
        }
    }

    fn inner(&self) -> &dyn MixtureStrategy {
        match self {
            Strategy::Static(s) => s,
            Strategy::Mos(m) => &**m,
        }
    }

    fn inner_mut(&mut self) -> &mut dyn MixtureStrategy {
        match self {
            Strategy::Static(s) => s,
            Strategy::Mos(m) => &mut **m,
        }
    }
}

impl MixtureStrategy for Strategy {
    fn needs(&self) -> Needs {
        self.inner().needs()
    }
    fn tick(&mut self) -> Option<UpdateInput> {
        self.inner_mut().tick()
    }
    fn probs(&self) -> Vec<f64> {
        self.inner().probs()
    }
    fn updates(&self) -> u64 {
        self.inner().updates()
    }
    fn has_state(&self) -> bool {
        self.inner().has_state()
    }
    fn estimate(&mut self, input: &ProbeInput) -> Result<UpdateInput, MixtureError> {
        self.inner_mut().estimate(input)
    }
    fn apply(&mut self, input: &UpdateInput) -> Result<Vec<f64>, MixtureError> {
        self.inner_mut().apply(input)
    }
    fn is_finite(&self) -> bool {
        self.inner().is_finite()
    }
}

/// What a stored strategy may look like: the tagged form, or the bare MoS scheduler that
/// checkpoints held before the seam existed.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Tagged(Tagged),
    Legacy(Box<MosScheduler>),
}

/// The tagged form, with the variants of [`Strategy`] (serde's `from` needs a second type to
/// derive the plain deserialisation on).
#[derive(Deserialize)]
enum Tagged {
    Static(StaticMixture),
    Mos(Box<MosScheduler>),
}

impl From<Stored> for Strategy {
    fn from(s: Stored) -> Self {
        match s {
            Stored::Tagged(Tagged::Static(m)) => Strategy::Static(m),
            Stored::Tagged(Tagged::Mos(m)) | Stored::Legacy(m) => Strategy::Mos(m),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SchedulerConfig;

    fn mos_settings() -> SchedulerConfig {
        SchedulerConfig {
            strategy: StrategyKind::Mos,
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn a_checkpoint_from_before_the_seam_still_loads_as_mos() {
        let mos = MosScheduler::new(&mos_settings(), &[10, 20, 30], None, 7).unwrap();
        let legacy = serde_json::to_string(&mos).unwrap();
        let back: Strategy = serde_json::from_str(&legacy).unwrap();
        assert_eq!(back, Strategy::Mos(Box::new(mos.clone())));
        // The tagged form round-trips too, for both variants.
        for s in [
            Strategy::Mos(Box::new(mos)),
            Strategy::Static(StaticMixture::new(vec![0.25, 0.75])),
        ] {
            let text = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<Strategy>(&text).unwrap(), s);
        }
    }

    #[test]
    fn only_a_learning_strategy_needs_probes_and_takes_inputs() {
        let sizes = [10, 20];
        let mut s = Strategy::new(&mos_settings(), &sizes, None, 1, &[]).unwrap();
        assert!(s.needs().probe.is_some() && s.has_state());
        let input = UpdateInput {
            reward: RewardKind::Cossim,
            raw: vec![0.5, 1.0],
            smoothed: vec![0.5, 1.0],
        };
        let before = s.probs();
        let after = s.apply(&input).unwrap();
        assert!(after[1] > before[1], "the larger reward gains weight");
        assert_eq!(s.updates(), 1);

        let fixed = SchedulerConfig {
            strategy: StrategyKind::Uniform,
            ..SchedulerConfig::default()
        };
        let mut u = Strategy::new(&fixed, &sizes, None, 1, &[0.5, 0.5]).unwrap();
        assert_eq!(u.needs(), Needs { probe: None });
        assert!(!u.has_state());
        assert_eq!(u.apply(&input), Err(MixtureError::NotLearned));
        assert_eq!(u.probs(), vec![0.5, 0.5]);
    }

    #[test]
    fn replay_of_a_record_applies_its_input_or_keeps_the_mixture() {
        let mut live = Strategy::new(&mos_settings(), &[10, 20], None, 3, &[]).unwrap();
        let mut again = live.clone();
        let input = UpdateInput {
            reward: RewardKind::Diff,
            raw: vec![2.0, 1.0],
            smoothed: vec![2.0, 1.0],
        };
        let before = live.probs();
        let after = live.apply(&input).unwrap();
        let record = UpdateRecord {
            step: 10,
            version: 1,
            before,
            after: after.clone(),
            reward: Some(input.reward),
            raw: input.raw.clone(),
            smoothed: input.smoothed.clone(),
            counts: vec![],
            names: vec!["a".into(), "b".into()],
        };
        let (replayed, learned) = again.replay(&record);
        assert!(learned);
        assert_eq!(
            replayed.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            after.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
        let tick = UpdateRecord {
            reward: None,
            raw: vec![],
            smoothed: vec![],
            ..record
        };
        assert_eq!(again.replay(&tick), (again.probs(), false));
    }

    #[test]
    fn the_constant_reward_control_reads_nothing_and_learns_ones_from_each_tick() {
        let settings = SchedulerConfig {
            reward: RewardKind::Constant,
            ..mos_settings()
        };
        let sizes = [10, 40];
        let mut s = Strategy::new(&settings, &sizes, None, 3, &[]).unwrap();
        // No probe pass and no reward actor, but state to checkpoint.
        assert_eq!(s.needs(), Needs { probe: None });
        assert!(s.has_state());
        let before = s.probs();
        let input = s.tick().expect("the control learns from ticks");
        assert_eq!(input.reward, RewardKind::Constant);
        assert_eq!(
            (input.raw.clone(), input.smoothed.clone()),
            (vec![1.0; 2], vec![1.0; 2])
        );
        let after = s.apply(&input).unwrap();
        // Equal rewards pull toward uniform: the smaller dataset gains weight.
        assert!(after[0] > before[0], "{before:?} -> {after:?}");
        // A reward other than 1 is not one the control produces, and is refused.
        let wrong = UpdateInput {
            raw: vec![2.0, 1.0],
            smoothed: vec![2.0, 1.0],
            ..input
        };
        assert!(s.apply(&wrong).is_err());
        assert_eq!(s.probs(), after);
        // A static mixture and the probing rewards learn nothing from a tick.
        let mut fixed = Strategy::new(
            &SchedulerConfig {
                strategy: StrategyKind::Uniform,
                ..SchedulerConfig::default()
            },
            &sizes,
            None,
            3,
            &[0.5, 0.5],
        )
        .unwrap();
        assert!(fixed.tick().is_none());
        let mut diff = Strategy::new(&mos_settings(), &sizes, None, 3, &[]).unwrap();
        assert!(diff.tick().is_none());
    }
}
