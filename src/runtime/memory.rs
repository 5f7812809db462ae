//! The memory estimate of a run, before anything trains, and the check against what the process
//! may use. A config that cannot fit (a huge `training.batch_size`) would otherwise abort the
//! process half way through start-up with "memory allocation failed" (SIGABRT), or hang under a
//! memory limit; this turns it into exit 2 with the keys to lower.
//!
//! The estimate is arithmetic on the config and the model shape, per trainer, in bytes:
//! - the learner's state: weights, gradients and AdamW's two moments, f32 (burn also keeps the
//!   gradients of one step as a separate map while the optimiser runs);
//! - activations kept for the backward pass of a `batch_size x seq_len` step (the fused trainer's
//!   own buffers, counted from its layout; burn's autodiff graph keeps more intermediates, a
//!   factor measured on this code);
//! - the largest forward-only pass (probe and eval chunks), because the fused trainer's
//!   activation buffers grow to the largest batch they see and never shrink;
//! - writing a checkpoint, which today serialises the weights (through a burn model and its
//!   record) and both moments into byte buffers while the training buffers are still held;
//! - the loaders' prefetch queues and the datasets held in memory;
//! - a fixed base for the executable, its thread stacks and allocator (measured).
//!
//! It is meant to be within a factor 1.5 of the measured peak RSS (`/usr/bin/time -v`), which
//! ARCHITECTURE.md records for the shipped configs; it is not a bound.

use std::fmt;

use super::{Prepared, RuntimeError};
use crate::config::{Backend, CpuKernels};

const F32: f64 = 4.0;
const MIB: f64 = (1u64 << 20) as f64;
const GIB: f64 = (1u64 << 30) as f64;

/// The executable's resident memory before any of the run's buffers: code, tokio and rayon
/// thread stacks, the allocator's arenas, the tokenizer. Measured: a 1-step run of a 6k-parameter
/// model peaks at about 40 MiB.
const BASE_BYTES: f64 = 40.0 * MIB;

/// How much more activation memory burn's autodiff graph keeps than the fused trainer's buffers
/// for the same step (measured on `configs/demo.toml` with `training.cpu_kernels = "burn"`: 143
/// MiB peak RSS against 112 MiB for the fused trainer, whose estimate is 131 MiB).
const BURN_ACTIVATION_FACTOR: f64 = 1.2;

/// Transient copies of the parameters while a checkpoint is written: the weights as a burn model
/// and as its MessagePack record, and both AdamW moments as safetensors bytes. Measured on
/// `configs/smollm2-cpu.toml` (134.5 M parameters): the peak RSS rises from 2.5 GiB while
/// training to 4.8 GiB while the final checkpoint is written, about 4.5 copies of the weights.
const CHECKPOINT_COPIES: f64 = 4.5;

/// One part of the estimate: what it is, how many bytes, and the config keys that size it.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryPart {
    /// What the bytes are for.
    pub name: &'static str,
    /// Estimated bytes.
    pub bytes: f64,
    /// The keys that change this part, most effective first.
    pub keys: &'static [&'static str],
}

/// The memory estimate of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryEstimate {
    /// The trainer the estimate is for (`fused`, `burn`).
    pub trainer: &'static str,
    /// The parts, in a fixed order.
    pub parts: Vec<MemoryPart>,
}

impl MemoryEstimate {
    /// The sum of the parts, in bytes. `f64`, because a config may ask for more than `u64` holds.
    pub fn total(&self) -> f64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// The keys to lower: those of the largest part, then of any other part that is at least a
    /// quarter of the total, each key once.
    pub fn keys_to_lower(&self) -> Vec<&'static str> {
        let total = self.total();
        let mut parts: Vec<&MemoryPart> = self.parts.iter().filter(|p| p.bytes > 0.0).collect();
        parts.sort_by(|a, b| b.bytes.total_cmp(&a.bytes));
        let mut keys = Vec::new();
        for (k, part) in parts.iter().enumerate() {
            if k > 0 && part.bytes < total / 4.0 {
                break;
            }
            for key in part.keys {
                if !keys.contains(key) {
                    keys.push(*key);
                }
            }
        }
        keys
    }
}

/// Formats bytes for people: MiB below 1 GiB, GiB above (and a plain number past f64's range of
/// sensible sizes).
pub fn human_bytes(bytes: f64) -> String {
    if bytes >= GIB {
        format!("{:.2} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / MIB)
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "memory estimate ({} trainer): {}",
            self.trainer,
            human_bytes(self.total())
        )?;
        for p in &self.parts {
            writeln!(
                f,
                "  {:<36} {:>14}  {}",
                p.name,
                human_bytes(p.bytes),
                if p.keys.is_empty() {
                    String::new()
                } else {
                    format!("({})", p.keys.join(", "))
                }
            )?;
        }
        Ok(())
    }
}

/// Which trainer the run will use: the one `model::build_learner` picks for this config. A
/// pretrained model with projection biases falls back from fused to burn at build time; the
/// estimate then counts the fused buffers, which is the smaller of the two, and says so by name.
fn trainer_of(p: &Prepared) -> &'static str {
    match (p.cfg.runtime.backend, p.cfg.training.cpu_kernels) {
        (Backend::Cpu, CpuKernels::Fused) => "fused",
        _ => "burn",
    }
}

/// Floats of the activations one forward pass keeps for `n` token positions of `b` sequences
/// of `t` positions (the fused trainer's `LayerActs` and `Acts`, field by field).
fn forward_floats(p: &Prepared, b: f64, t: f64) -> f64 {
    let m = &p.model;
    let (d, f, v) = (m.d_model as f64, m.ffn_hidden as f64, m.vocab_size as f64);
    let kv = (m.n_kv_heads * m.head_dim()) as f64;
    let n = b * t;
    // x, xn1, q, o, x2, xn2: [n, d]; k, v: [n, kv]; g, u, h: [n, ffn]; r1, r2: [n];
    // p: [b, heads, t, t].
    let per_layer = n * (6.0 * d + 2.0 * kv + 3.0 * f + 2.0) + b * m.n_heads as f64 * t * t;
    // The final norm's input and output and the gathered rows, then the logits of every row.
    let head = n * (3.0 * d + v);
    m.n_layers as f64 * per_layer + head
}

/// Floats of the backward pass's scratch (the fused trainer's `GradScratch`, and the logits'
/// gradient).
fn backward_floats(p: &Prepared, b: f64, t: f64) -> f64 {
    let m = &p.model;
    let (d, f, v) = (m.d_model as f64, m.ffn_hidden as f64, m.vocab_size as f64);
    let kv = (m.n_kv_heads * m.head_dim()) as f64;
    let n = b * t;
    n * (5.0 * d + 2.0 * kv + 2.0 * f + v) + b * m.n_heads as f64 * t * t
}

/// The memory estimate of a prepared run.
pub fn estimate(p: &Prepared) -> MemoryEstimate {
    let cfg = &p.cfg;
    let tr = &cfg.training;
    let trainer = trainer_of(p);
    let params = p.model.num_params() as f64;
    let (b, t) = (tr.batch_size as f64, tr.seq_len as f64);
    // Probe chunks are `max(batch, 16) * 2` sequences, eval chunks `max(batch, 8)` (see
    // `trainer::sets`), each capped by the number of examples there are.
    let probe_rows = (tr.batch_size.max(16) * 2).min(cfg.scheduler.probe_size.max(1)) as f64;
    let eval_rows = tr.batch_size.max(8).min(tr.eval_examples.max(1)) as f64;
    // Only MoS runs probe passes; the static strategies only evaluate.
    let probing = cfg.scheduler.strategy == crate::config::Strategy::Mos
        && cfg.scheduler.reward != crate::config::RewardKind::Constant;
    let forward_rows = if probing {
        eval_rows.max(probe_rows)
    } else {
        eval_rows
    };

    let state_copies = if trainer == "fused" { 4.0 } else { 5.0 };
    let act_factor = if trainer == "fused" {
        1.0
    } else {
        BURN_ACTIVATION_FACTOR
    };
    let train_acts = act_factor * (forward_floats(p, b, t) + backward_floats(p, b, t)) * F32;
    // A forward-only chunk larger than the training step raises the peak by the difference:
    // the fused trainer's buffers grow to it and stay, and burn frees a step's graph before a
    // probe or an evaluation builds its own.
    let extra_forward =
        (act_factor * forward_floats(p, forward_rows, t) * F32 - train_acts).max(0.0);
    // A queued example is its tokens (u32) and its mask (bool), plus the Vec headers.
    let queue_bytes = p.datasets.len() as f64 * cfg.data.prefetch as f64 * (t * 5.0 + 64.0);
    // The records as strings, with the held-out split and the encoded probe and eval sets
    // beside them: about twice and a half the training file.
    let data_bytes: f64 = p
        .datasets
        .iter()
        .map(|d| 2.5 * std::fs::metadata(&d.path).map_or(0.0, |m| m.len() as f64))
        .sum();

    MemoryEstimate {
        trainer,
        parts: vec![
            MemoryPart {
                name: "weights, gradients, AdamW moments",
                bytes: state_copies * params * F32,
                keys: &["model.d_model", "model.n_layers", "model.ffn_hidden"],
            },
            MemoryPart {
                name: "writing a checkpoint",
                bytes: CHECKPOINT_COPIES * params * F32,
                keys: &["model.d_model", "model.n_layers", "model.ffn_hidden"],
            },
            MemoryPart {
                name: "training activations (batch x seq)",
                bytes: train_acts,
                keys: &["training.batch_size", "training.seq_len"],
            },
            MemoryPart {
                name: "probe and eval passes",
                bytes: extra_forward,
                keys: &["scheduler.probe_size", "training.eval_examples"],
            },
            MemoryPart {
                name: "prefetch queues",
                bytes: queue_bytes,
                keys: &["data.prefetch"],
            },
            MemoryPart {
                name: "datasets in memory",
                bytes: data_bytes,
                keys: &["[[datasets]] (fewer or smaller files)"],
            },
            MemoryPart {
                name: "executable, threads, allocator",
                bytes: BASE_BYTES,
                keys: &[],
            },
        ],
    }
}

/// What the process may use, in bytes, and where the figure comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryLimit {
    /// Bytes.
    pub bytes: u64,
    /// `"cgroup limit"` or `"available memory"`.
    pub source: &'static str,
}

/// The memory this process may still use: the cgroup's limit when there is one (minus what the
/// cgroup already uses), else the system's available memory (free plus reclaimable caches).
/// `None` where the platform does not say.
pub fn memory_limit() -> Option<MemoryLimit> {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let available = sys.available_memory();
    if let Some(cg) = sys.cgroup_limits() {
        // sysinfo reports the host's memory as the cgroup total when no limit is set.
        if cg.total_memory > 0 && cg.total_memory < sys.total_memory() {
            return Some(MemoryLimit {
                bytes: cg.free_memory.min(available),
                source: "cgroup limit",
            });
        }
    }
    (available > 0).then_some(MemoryLimit {
        bytes: available,
        source: "available memory",
    })
}

/// Refuses a run whose estimate exceeds `limit` (unless `runtime.memory_check = false`), and
/// returns the estimate.
pub fn check(p: &Prepared, limit: Option<MemoryLimit>) -> Result<MemoryEstimate, RuntimeError> {
    let est = estimate(p);
    refuse_over(&est, p.cfg.runtime.memory_check, limit)?;
    Ok(est)
}

/// Refuses an estimate above `limit` when `enabled` (`runtime.memory_check`), naming the keys
/// to lower. For a caller that has printed the estimate already (`mos-runtime check`).
pub fn refuse_over(
    est: &MemoryEstimate,
    enabled: bool,
    limit: Option<MemoryLimit>,
) -> Result<(), RuntimeError> {
    if !enabled {
        return Ok(());
    }
    let Some(limit) = limit else {
        tracing::debug!("no memory limit known on this platform: memory check skipped");
        return Ok(());
    };
    if est.total() > limit.bytes as f64 {
        let keys = est.keys_to_lower();
        return Err(RuntimeError::Memory {
            estimate: human_bytes(est.total()),
            limit: human_bytes(limit.bytes as f64),
            source_of_limit: limit.source,
            largest: est
                .parts
                .iter()
                .max_by(|a, b| a.bytes.total_cmp(&b.bytes))
                .map_or("", |p| p.name),
            keys: keys.join(", "),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &'static str, bytes: f64, keys: &'static [&'static str]) -> MemoryPart {
        MemoryPart { name, bytes, keys }
    }

    #[test]
    fn the_keys_to_lower_come_from_the_parts_that_matter_largest_first() {
        let est = MemoryEstimate {
            trainer: "fused",
            parts: vec![
                part("state", 30.0, &["model.d_model"]),
                part("acts", 60.0, &["training.batch_size", "training.seq_len"]),
                part("queues", 10.0, &["data.prefetch"]),
            ],
        };
        assert_eq!(est.total(), 100.0);
        // The queues are under a quarter of the total: lowering them would not help.
        assert_eq!(
            est.keys_to_lower(),
            ["training.batch_size", "training.seq_len", "model.d_model"]
        );
    }

    #[test]
    fn sizes_read_as_mib_below_a_gib_and_gib_above() {
        assert_eq!(human_bytes(1.5 * MIB), "1.5 MiB");
        assert_eq!(human_bytes(3.0 * GIB), "3.00 GiB");
        // Far past u64: still a number, never an overflow.
        assert!(human_bytes(1e30).ends_with("GiB"));
    }
}
