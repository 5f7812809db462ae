//! The MoS scheduler's state machine (method.md 2): rewards from probe statistics, then a
//! REINFORCE update of the scorer. The scheduler actor wraps it; `replay` drives [`MosScheduler::update`]
//! directly with recorded rewards.

use serde::{Deserialize, Serialize};

use super::{
    cossim_rewards, cossim_target_rewards, diff_rewards, exact, mos_prior, mospec_diff,
    reward_range, Adam, Ema, MixtureError, Scorer, StateFault, REWARD_FLOOR,
    REWARD_SCALE_THRESHOLD,
};
use crate::config::{RewardKind, SchedulerConfig};

/// Probe statistics of one MoS update, one entry per dataset, in dataset order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ProbeInput {
    /// COSSIM: `z_i`, the mean last-layer embedding of dataset i's probe examples.
    Embeddings(Vec<Vec<f64>>),
    /// DIFF: per-probe-example perplexities of dataset i, now and at theta_0 (same examples, same
    /// order).
    Perplexities {
        /// Perplexities under the current model.
        now: Vec<Vec<f64>>,
        /// Perplexities under the initial model theta_0 (computed once at start-up).
        initial: Vec<Vec<f64>>,
    },
}

/// The rewards of one update.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardOutcome {
    /// The reward of each dataset after MoSpec, before the EMA (and before clipping).
    pub raw: Vec<f64>,
    /// The reward the update uses: the EMA of `raw` if enabled, else `raw` (not yet clipped).
    pub smoothed: Vec<f64>,
}

/// The MoS scheduler: settings, the scorer, its ONE Adam state for the whole run, the EMA state and
/// the update count. Serialise it whole into the checkpoint; deserialising gives a scheduler that
/// continues bit-identically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MosScheduler {
    reward: RewardKind,
    ema_enabled: bool,
    target: Option<usize>,
    #[serde(with = "exact::f64_bits")]
    target_boost: f64,
    #[serde(with = "exact::f64_bits")]
    scorer_lr: f64,
    scorer_steps: usize,
    scorer: Scorer,
    adam: Adam,
    ema: Ema,
    updates: u64,
}

impl MosScheduler {
    /// A scheduler over datasets of the given sizes, starting from `q_tau(sizes,
    /// cfg.init_temperature)`. `target` is the MoSpec target's dataset index (resolve
    /// `cfg.target`'s name with `Config::dataset_index`); `seed` seeds the MLP scorer's
    /// initialisation (unused by `Logits`).
    ///
    /// Refuses a prior with an entry of exactly 0 ([`mos_prior`]: a dataset of size 0, or a
    /// `scheduler.init_temperature` so small that the prior underflows), which would otherwise
    /// freeze the mixture at the first update.
    pub fn new(
        cfg: &SchedulerConfig,
        sizes: &[u64],
        target: Option<usize>,
        seed: u64,
    ) -> Result<Self, MixtureError> {
        let prior = mos_prior(sizes, cfg.init_temperature.0)?;
        Self::from_mixture(cfg, &prior, target, seed)
    }

    /// A scheduler whose scorer starts from the mixture `p` instead of `q_tau` (used when a
    /// resumed run's dataset list changed: the old mixture, remapped by name, is the start).
    /// Adam moments, EMA and the update count start fresh. Refuses a mixture with an entry of
    /// exactly 0 (its logit would be `-inf`, which no update can move) and a
    /// `scheduler.scorer_lr` too small to change the scorer's logits at all.
    pub fn from_mixture(
        cfg: &SchedulerConfig,
        p: &[f64],
        target: Option<usize>,
        seed: u64,
    ) -> Result<Self, MixtureError> {
        let n = p.len();
        if n == 0 {
            return Err(MixtureError::NoDatasets);
        }
        if let Some(t) = target {
            if t >= n {
                return Err(MixtureError::TargetOutOfRange { target: t, n });
            }
        }
        let setting = |key, ok: bool, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(MixtureError::InvalidSetting {
                    key,
                    message: message.to_string(),
                })
            }
        };
        setting(
            "scheduler.scorer_lr",
            cfg.scorer_lr.is_finite() && cfg.scorer_lr > 0.0,
            "must be positive and finite",
        )?;
        setting(
            "scheduler.ema_beta",
            cfg.ema_beta > 0.0 && cfg.ema_beta <= 1.0,
            "must be in (0, 1]",
        )?;
        setting(
            "scheduler.target_boost",
            cfg.target_boost.is_finite() && cfg.target_boost > 0.0,
            "must be positive and finite",
        )?;
        if let Some(i) = p.iter().position(|&x| x == 0.0) {
            return Err(MixtureError::InvalidPrior(format!(
                "entry {i} is 0; the MoS scorer needs every starting probability to be positive \
                 (a zero becomes a -inf logit that no update can move)"
            )));
        }
        let scorer = Scorer::new(cfg.scorer, p, seed)?;
        let adam = Adam::new(scorer.n_params());
        if let Some(index) = stuck_param(&scorer, &adam, cfg.scorer_lr) {
            return Err(MixtureError::InvalidSetting {
                key: "scheduler.scorer_lr",
                message: format!(
                    "{:e} is too small to move the scorer: a step of that size leaves its \
                     parameter {index} ({}) unchanged in f64",
                    cfg.scorer_lr,
                    scorer.params()[index]
                ),
            });
        }
        Ok(Self {
            reward: cfg.reward,
            ema_enabled: cfg.ema,
            target,
            target_boost: cfg.target_boost,
            scorer_lr: cfg.scorer_lr,
            scorer_steps: cfg.scorer_steps,
            scorer,
            adam,
            ema: Ema::new(cfg.ema_beta),
            updates: 0,
        })
    }

    /// The current mixture p_psi (one probability per dataset, summing to 1).
    pub fn probs(&self) -> Vec<f64> {
        self.scorer.probs()
    }

    /// Number of datasets N.
    pub fn n_datasets(&self) -> usize {
        self.scorer.n_datasets()
    }

    /// The configured reward family.
    pub fn reward_kind(&self) -> RewardKind {
        self.reward
    }

    /// The MoSpec target index, if any.
    pub fn target(&self) -> Option<usize> {
        self.target
    }

    /// REINFORCE updates applied so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The scorer (its parameters are what the checkpoint stores).
    pub fn scorer(&self) -> &Scorer {
        &self.scorer
    }

    /// The scorer's Adam state (moments and step count carry over between updates).
    pub fn adam(&self) -> &Adam {
        &self.adam
    }

    /// The EMA state: the last smoothed reward, `None` before the first observation or when the
    /// EMA is disabled.
    pub fn smoothed(&self) -> Option<&[f64]> {
        self.ema.state()
    }

    /// Turns one update's probe statistics into rewards: the reward family (COSSIM or DIFF), then
    /// MoSpec if a target is set, then the EMA if enabled (updating the EMA state).
    ///
    /// Fails, leaving the state untouched, if the input is of the other family, does not have one
    /// entry per dataset, is ragged or empty, contains a value that would make a reward
    /// non-finite (NaN/inf embeddings, non-positive or non-finite perplexities), or gives a
    /// reward outside its family's accepted range ([`super::reward_range`]: a perplexity ratio
    /// above a million means a diverged model, not a dataset to favour).
    pub fn rewards_from_probes(
        &mut self,
        input: &ProbeInput,
    ) -> Result<RewardOutcome, MixtureError> {
        let n = self.n_datasets();
        let raw = match (self.reward, input) {
            (RewardKind::Cossim, ProbeInput::Embeddings(z)) => {
                check_len("embeddings", n, z.len())?;
                let dim = z[0].len();
                for (index, zi) in z.iter().enumerate() {
                    if zi.len() != dim {
                        return Err(bad(
                            index,
                            format!(
                                "embedding has {} dimensions, dataset 0's has {dim}",
                                zi.len()
                            ),
                        ));
                    }
                    if zi.iter().any(|x| !x.is_finite()) {
                        return Err(bad(index, "embedding has a non-finite entry".into()));
                    }
                }
                match self.target {
                    Some(t) => cossim_target_rewards(z, t),
                    None => cossim_rewards(z),
                }
            }
            (RewardKind::Diff, ProbeInput::Perplexities { now, initial }) => {
                check_len("perplexities now", n, now.len())?;
                check_len("initial perplexities", n, initial.len())?;
                for (index, (a, b)) in now.iter().zip(initial).enumerate() {
                    if a.is_empty() || a.len() != b.len() {
                        return Err(bad(
                            index,
                            format!(
                                "{} current and {} initial perplexities; need the same non-zero number",
                                a.len(),
                                b.len()
                            ),
                        ));
                    }
                    // A perplexity is exp(mean NLL) >= 1 in theory; accept any positive finite value.
                    if a.iter().chain(b).any(|x| !(x.is_finite() && *x > 0.0)) {
                        return Err(bad(index, "a perplexity is not positive and finite".into()));
                    }
                }
                let r = diff_rewards(now, initial);
                match self.target {
                    Some(t) => mospec_diff(r, t, self.target_boost),
                    None => r,
                }
            }
            (expected, ProbeInput::Embeddings(_)) => {
                return Err(MixtureError::WrongProbeKind {
                    expected,
                    found: "embeddings",
                })
            }
            (expected, ProbeInput::Perplexities { .. }) => {
                return Err(MixtureError::WrongProbeKind {
                    expected,
                    found: "perplexities",
                })
            }
        };
        if let Some((index, &value)) = raw.iter().enumerate().find(|(_, r)| !r.is_finite()) {
            // Finite inputs can still overflow (a ratio of 1e308 / 1e-308).
            return Err(MixtureError::NonFiniteReward { index, value });
        }
        check_range(self.reward, &raw)?;
        let smoothed = if self.ema_enabled {
            // On a copy, committed only if the new average is finite (it is a convex combination
            // of accepted rewards, so this is a last line of defence rather than a likely path).
            let mut ema = self.ema.clone();
            let smoothed = ema.observe(&raw);
            if let Some(index) = smoothed.iter().position(|x| !x.is_finite()) {
                return Err(MixtureError::StateRefused {
                    field: "ema",
                    fault: StateFault::NotFinite { index },
                });
            }
            self.ema = ema;
            smoothed
        } else {
            raw.clone()
        };
        Ok(RewardOutcome { raw, smoothed })
    }

    /// One REINFORCE update (method.md 2.2) with already smoothed rewards: clips them to at least
    /// [`REWARD_FLOOR`], takes `scorer_steps` Adam steps on `-sum_i R_i ln p_i` with the run's one
    /// Adam state, and returns the new mixture.
    ///
    /// Pure `f64` arithmetic in a fixed order: feeding the same rewards to schedulers in the same
    /// state gives bit-identical results (what `replay` relies on). Fails, leaving the state
    /// untouched, if `rewards` does not have one entry per dataset or has a NaN/inf entry, or if
    /// the state it would leave is not sound.
    ///
    /// The update is computed on copies of the scorer and its Adam state, and committed only if
    /// the whole new state is sound: the scorer's parameters are finite
    /// ([`MixtureError::UpdateDiverged`] otherwise); both Adam moments and its bias-correction
    /// powers are finite; every parameter that sets a logit can still move, i.e. the step an
    /// ordinary unit gradient would take, `lr / (sqrt(v_hat + 1) + eps)`, still changes it in
    /// `f64` (a huge reward can leave the second moment so large, or infinite, that no later
    /// update moves the mixture: the freeze of issue 20); and the mixture gives no dataset
    /// probability exactly 0. The step counters are `u64`s, which cannot become non-finite.
    /// This is the method's update with the rewards as given; [`MosScheduler::apply_rewards`]
    /// adds the accepted range and the scaling of large rewards, and is what the runtime, the
    /// service and `replay` call.
    pub fn update(&mut self, rewards: &[f64]) -> Result<Vec<f64>, MixtureError> {
        check_len("rewards", self.n_datasets(), rewards.len())?;
        if let Some((index, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
            return Err(MixtureError::NonFiniteReward { index, value });
        }
        let clipped: Vec<f64> = rewards.iter().map(|&r| r.max(REWARD_FLOOR)).collect();
        // Finite rewards can still overflow inside the update (e.g. two rewards near f64::MAX
        // sum to infinity, or one above 1e154 squares to infinity in Adam's second moment); work
        // on copies and keep them only if the whole state stays usable, so a bad update is
        // refused instead of silently turning the mixture uniform or freezing it.
        let mut scorer = self.scorer.clone();
        let mut adam = self.adam.clone();
        scorer.reinforce(&mut adam, &clipped, self.scorer_lr, self.scorer_steps);
        let probs = checked_probs(&scorer, &adam, self.scorer_lr)?;
        self.scorer = scorer;
        self.adam = adam;
        self.updates += 1;
        Ok(probs)
    }

    /// The update the runtime, the service and `replay` apply (through
    /// `MixtureStrategy::apply`): `rewards` of family `kind` are refused outside
    /// [`super::reward_range`], scaled down by one common factor when their largest entry (after
    /// the floor) is above [`REWARD_SCALE_THRESHOLD`], and passed to [`MosScheduler::update`].
    /// Rewards whose largest entry is at most the threshold are passed on untouched, so results
    /// for ordinary rewards are bit-identical to `update`'s.
    pub fn apply_rewards(
        &mut self,
        kind: RewardKind,
        rewards: &[f64],
    ) -> Result<Vec<f64>, MixtureError> {
        check_len("rewards", self.n_datasets(), rewards.len())?;
        check_range(kind, rewards)?;
        let largest = rewards.iter().fold(REWARD_FLOOR, |m, &r| m.max(r));
        if largest <= REWARD_SCALE_THRESHOLD {
            return self.update(rewards);
        }
        let scale = REWARD_SCALE_THRESHOLD / largest;
        let scaled: Vec<f64> = rewards
            .iter()
            .map(|&r| (r.max(REWARD_FLOOR) * scale).max(REWARD_FLOOR))
            .collect();
        self.update(&scaled)
    }

    /// Whether the whole state is sound: what every update checks before it commits (see
    /// [`MosScheduler::update`]), applied to the current state. A scheduler built by this module
    /// always passes; a state deserialised from a damaged checkpoint may not.
    pub fn check_state(&self) -> Result<(), MixtureError> {
        if let Some(index) = self
            .ema
            .state()
            .and_then(|s| s.iter().position(|x| !x.is_finite()))
        {
            return Err(MixtureError::StateRefused {
                field: "ema",
                fault: StateFault::NotFinite { index },
            });
        }
        checked_probs(&self.scorer, &self.adam, self.scorer_lr).map(|_| ())
    }
}

/// The first parameter that sets a logit and that a unit gradient's Adam step could no longer
/// change in `f64` (see [`StateFault::CannotMove`]).
fn stuck_param(scorer: &Scorer, adam: &Adam, lr: f64) -> Option<usize> {
    let params = scorer.params();
    scorer.direct_params().find(|&k| {
        let step = adam.unit_step(k, lr);
        let p = params[k];
        // Both directions: the spacing of f64 values halves below a power of two, so a step can
        // register one way and not the other; a parameter that can move only one way is stuck
        // for half of all gradients.
        p - step == p || p + step == p
    })
}

/// The mixture of a candidate state, or why the state must not be committed. The order of the
/// checks is the order of the fields in [`MosScheduler::update`]'s documentation.
fn checked_probs(scorer: &Scorer, adam: &Adam, lr: f64) -> Result<Vec<f64>, MixtureError> {
    if scorer.params().iter().any(|x| !x.is_finite()) {
        return Err(MixtureError::UpdateDiverged);
    }
    if let Some((field, index)) = adam.non_finite() {
        return Err(MixtureError::StateRefused {
            field,
            fault: StateFault::NotFinite { index },
        });
    }
    if let Some(index) = stuck_param(scorer, adam, lr) {
        return Err(MixtureError::StateRefused {
            field: "adam.v",
            fault: StateFault::CannotMove { index },
        });
    }
    let probs = scorer.probs();
    if let Some(index) = probs.iter().position(|x| !x.is_finite()) {
        return Err(MixtureError::StateRefused {
            field: "mixture",
            fault: StateFault::NotFinite { index },
        });
    }
    if let Some(index) = probs.iter().position(|&x| x == 0.0) {
        return Err(MixtureError::StateRefused {
            field: "mixture",
            fault: StateFault::Saturated { index },
        });
    }
    Ok(probs)
}

/// Refuses a reward that is not finite or lies outside its family's accepted range.
fn check_range(kind: RewardKind, rewards: &[f64]) -> Result<(), MixtureError> {
    if let Some((index, &value)) = rewards.iter().enumerate().find(|(_, r)| !r.is_finite()) {
        return Err(MixtureError::NonFiniteReward { index, value });
    }
    let (min, max) = reward_range(kind);
    match rewards
        .iter()
        .enumerate()
        .find(|(_, r)| !(min..=max).contains(*r))
    {
        Some((index, &value)) => Err(MixtureError::RewardOutOfRange {
            index,
            value,
            kind,
            min,
            max,
        }),
        None => Ok(()),
    }
}

fn check_len(what: &'static str, expected: usize, found: usize) -> Result<(), MixtureError> {
    if expected == found {
        Ok(())
    } else {
        Err(MixtureError::LengthMismatch {
            what,
            expected,
            found,
        })
    }
}

fn bad(index: usize, message: String) -> MixtureError {
    MixtureError::BadProbe { index, message }
}
