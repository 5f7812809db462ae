//! A host-supplied model behind the [`Learner`] trait drives the whole runtime: loaders, reward
//! actor, MoS scheduler, checkpoints and resume work as with the built-in burn model.

mod common;

use std::time::Duration;

use common::*;
use mos_runtime::learner::{ModelError, ProbeNeed, ProbeStats, StepOutput, TokenBatch};
use mos_runtime::mixture::MixtureLogLine;
use mos_runtime::runtime::{Runtime, StartOptions};
use mos_runtime::trainer::{Learner, UnigramLearner};

fn factory() -> mos_runtime::runtime::LearnerFactory {
    Box::new(|_cfg, tok| Ok(Box::new(UnigramLearner::new(tok.vocab_size())) as Box<dyn Learner>))
}

#[test]
fn a_custom_learner_trains_under_mos_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra =
        "[scheduler]\nstrategy = \"mos\"\nreward = \"diff\"\nupdate_every = 5\nprobe_size = 8";
    let mut cfg = load_tiny(dir.path(), "whole", 40, extra);
    cfg.runtime.deterministic = true;
    cfg.runtime.trace_samples = true;
    cfg.runtime.checkpoint_every = 10;
    let whole_dir = cfg.runtime.output_dir.clone();
    let mut split = cfg.clone();
    split.runtime.output_dir = dir.path().join("split");
    let split_dir = split.runtime.output_dir.clone();
    let rt = tokio_rt();

    let summary = rt.block_on(async {
        let h = Runtime::start_with_learner(cfg, StartOptions::default(), factory())
            .await
            .unwrap();
        h.wait().await.unwrap()
    });
    assert_eq!(summary.steps, 40);
    assert!(
        summary.last_loss < summary.first_loss - 0.5,
        "the unigram model learned: {} -> {}",
        summary.first_loss,
        summary.last_loss
    );
    // The run's weights are the learner's own format.
    let weights: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole_dir.join("model.mpk")).unwrap()).unwrap();
    assert_eq!(weights["step"], 40);
    let lines: Vec<MixtureLogLine> =
        mos_runtime::runlog::read_all(&whole_dir.join("mixture.jsonl")).unwrap();
    let moved = lines.iter().any(|l| match l {
        MixtureLogLine::Update(u) => u.before != u.after,
        MixtureLogLine::Start(_) => false,
    });
    assert!(
        moved,
        "DIFF rewards from the learner's probes moved the mixture"
    );

    // Stop at 20, resume to 40: the same examples and mixtures as the whole run.
    let mut first = split.clone();
    first.runtime.stop_at_step = 20;
    rt.block_on(async {
        let h = Runtime::start_with_learner(first, StartOptions::default(), factory())
            .await
            .unwrap();
        let s = h.wait().await.unwrap();
        assert!(s.interrupted && s.steps == 20);
        let h = Runtime::start_with_learner(split, StartOptions::default(), factory())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        let s = h.wait().await.unwrap();
        assert_eq!(s.resumed_from, Some(20));
        assert_eq!(s.steps, 40);
    });
    for f in ["samples.jsonl", "mixture.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(whole_dir.join(f)).unwrap(),
            std::fs::read_to_string(split_dir.join(f)).unwrap(),
            "{f} differs between the whole and the resumed run"
        );
    }
}

#[test]
fn the_handle_pauses_resumes_subscribes_checkpoints_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let extra =
        "[scheduler]\nstrategy = \"mos\"\nreward = \"cossim\"\nupdate_every = 5\nprobe_size = 8";
    let mut cfg = load_tiny(dir.path(), "handle", 10_000_000, extra);
    cfg.runtime.checkpoint_every = 0;
    let out = cfg.runtime.output_dir.clone();
    tokio_rt().block_on(async {
        let h = Runtime::start_with_learner(cfg, StartOptions::default(), factory())
            .await
            .unwrap();
        let mut updates = h.subscribe();
        // A mixture update arrives through the subscription.
        tokio::time::timeout(Duration::from_secs(60), updates.changed())
            .await
            .expect("no mixture update within 60 s")
            .unwrap();
        assert!(updates.borrow().version >= 1);
        assert_eq!(h.mixture().names.len(), 4);

        // Paused: the step stops moving (after the step in flight).
        h.pause();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let paused_at = h.step();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(h.step(), paused_at, "training went on while paused");

        // A checkpoint requested while paused is written once training resumes.
        h.checkpoint();
        h.resume();
        let t0 = std::time::Instant::now();
        while mos_runtime::checkpoint::list(&out).is_empty() {
            assert!(t0.elapsed() < Duration::from_secs(60), "no checkpoint");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(h.step() > paused_at, "training resumed");

        h.stop();
        let s = h.wait().await.unwrap();
        assert!(s.interrupted);
        assert!(s.steps > paused_at);
    });
}

/// A learner that records which statistics each probe pass asked for and returns only those,
/// so a reward that read the other field would see it empty.
struct Recording {
    inner: UnigramLearner,
    needs: std::sync::Arc<std::sync::Mutex<Vec<ProbeNeed>>>,
}

impl Learner for Recording {
    fn step(&self) -> u64 {
        self.inner.step()
    }
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        self.inner.train_step(batch)
    }
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        self.inner.eval_nll(batch)
    }
    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        self.inner.probe(batch)
    }
    fn probe_for(&self, batch: &TokenBatch, need: ProbeNeed) -> ProbeStats {
        self.needs.lock().unwrap().push(need);
        let mut stats = self.inner.probe(batch);
        if !need.nll() {
            stats.nll.clear();
        }
        if !need.embeddings() {
            stats.embeddings.clear();
        }
        stats
    }
    fn save_state(&self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.inner.save_state(dir)
    }
    fn load_state(&mut self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.inner.load_state(dir)
    }
    fn save_weights(&self, path: &std::path::Path) -> Result<(), ModelError> {
        self.inner.save_weights(path)
    }
}

#[test]
fn probe_passes_ask_only_for_what_the_reward_reads() {
    for (reward, want) in [("diff", ProbeNeed::Nll), ("cossim", ProbeNeed::Embeddings)] {
        let dir = tempfile::tempdir().unwrap();
        write_corpus(dir.path());
        let extra = format!(
            "[scheduler]\nstrategy = \"mos\"\nreward = \"{reward}\"\nupdate_every = 5\nprobe_size = 8\nscorer_lr = 0.1"
        );
        let mut cfg = load_tiny(dir.path(), "needs", 20, &extra);
        cfg.runtime.deterministic = true;
        let out = cfg.runtime.output_dir.clone();
        let needs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = needs.clone();
        let factory: mos_runtime::runtime::LearnerFactory = Box::new(move |_cfg, tok| {
            Ok(Box::new(Recording {
                inner: UnigramLearner::new(tok.vocab_size()),
                needs: seen.clone(),
            }) as Box<dyn Learner>)
        });
        tokio_rt().block_on(async {
            let h = Runtime::start_with_learner(cfg, StartOptions::default(), factory)
                .await
                .unwrap();
            assert_eq!(h.wait().await.unwrap().steps, 20);
        });
        let needs = needs.lock().unwrap().clone();
        let lines: Vec<MixtureLogLine> =
            mos_runtime::runlog::read_all(&out.join("mixture.jsonl")).unwrap();
        let updates: Vec<_> = lines
            .iter()
            .filter_map(|l| match l {
                MixtureLogLine::Update(u) => Some(u),
                MixtureLogLine::Start(_) => None,
            })
            .collect();
        assert!(updates.len() >= 3, "{reward}: {} updates", updates.len());
        // One call per probe chunk (one per dataset here): the four datasets at start-up
        // (theta_0 perplexities, read under either reward), then four at every update.
        assert_eq!(needs.len(), 4 * (1 + updates.len()), "{reward}: {needs:?}");
        assert!(
            needs[..4].iter().all(|&n| n == ProbeNeed::Nll),
            "{reward}: {needs:?}"
        );
        assert!(needs[4..].iter().all(|&n| n == want), "{reward}: {needs:?}");
        // The rewards came from the statistic that was computed: the mixture moved.
        assert!(
            updates.iter().any(|u| u.before != u.after),
            "{reward}: the mixture never moved"
        );
    }
}

/// [`UnigramLearner`] under another kind: the same files, but a different learner as far as
/// checkpoints are concerned.
struct Renamed(UnigramLearner);

impl Learner for Renamed {
    fn kind(&self) -> &str {
        "renamed"
    }
    fn step(&self) -> u64 {
        self.0.step()
    }
    fn train_step(&mut self, batch: &TokenBatch) -> StepOutput {
        self.0.train_step(batch)
    }
    fn eval_nll(&self, batch: &TokenBatch) -> Vec<f64> {
        self.0.eval_nll(batch)
    }
    fn probe(&self, batch: &TokenBatch) -> ProbeStats {
        self.0.probe(batch)
    }
    fn save_state(&self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.0.save_state(dir)
    }
    fn load_state(&mut self, dir: &std::path::Path) -> Result<(), ModelError> {
        self.0.load_state(dir)
    }
    fn save_weights(&self, path: &std::path::Path) -> Result<(), ModelError> {
        self.0.save_weights(path)
    }
}

#[test]
fn a_checkpoint_is_resumed_only_by_the_learner_kind_that_wrote_it() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(dir.path());
    let mut cfg = load_tiny(dir.path(), "kinds", 20, "");
    cfg.runtime.deterministic = true;
    cfg.runtime.checkpoint_every = 10;
    let out = cfg.runtime.output_dir.clone();
    let mut first = cfg.clone();
    first.runtime.stop_at_step = 10;
    let renamed: mos_runtime::runtime::LearnerFactory = Box::new(|_cfg, tok| {
        Ok(Box::new(Renamed(UnigramLearner::new(tok.vocab_size()))) as Box<dyn Learner>)
    });
    let rt = tokio_rt();
    rt.block_on(async {
        let h = Runtime::start_with_learner(first, StartOptions::default(), factory())
            .await
            .unwrap();
        assert_eq!(h.wait().await.unwrap().steps, 10);
    });
    let (ckpt, _) = mos_runtime::checkpoint::latest_valid(&out).unwrap();
    let state: mos_runtime::checkpoint::RunState =
        mos_runtime::checkpoint::read_json(&ckpt, mos_runtime::checkpoint::RUN_STATE).unwrap();
    assert_eq!(state.learner.as_deref(), Some("unigram"));

    // Another kind is refused by name, before it reads a file of the checkpoint.
    let err = rt.block_on(async {
        let h = Runtime::start_with_learner(cfg.clone(), StartOptions::default(), renamed)
            .await
            .unwrap();
        h.wait().await.unwrap_err()
    });
    let text = err.to_string();
    for needle in ["`unigram`", "`renamed`", "training.cpu_kernels"] {
        assert!(text.contains(needle), "`{needle}` missing from: {text}");
    }
    let mut source = std::error::Error::source(&err);
    let mut typed = false;
    while let Some(e) = source {
        typed |= matches!(
            e.downcast_ref::<mos_runtime::checkpoint::CheckpointError>(),
            Some(mos_runtime::checkpoint::CheckpointError::LearnerMismatch { checkpoint, run, .. })
                if checkpoint == "unigram" && run == "renamed"
        );
        source = e.source();
    }
    assert!(typed, "no LearnerMismatch in the chain of: {text}");

    // The kind that wrote it resumes it.
    let s = rt.block_on(async {
        let h = Runtime::start_with_learner(cfg, StartOptions::default(), factory())
            .await
            .unwrap();
        h.wait().await.unwrap()
    });
    assert_eq!(s.resumed_from, Some(10));
    assert_eq!(s.steps, 20);
}
