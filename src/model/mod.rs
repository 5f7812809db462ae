//! The burn Llama model, its batches, losses, probe statistics and the optimiser step.
//!
//! This module owns the training device and every tensor on it: the decoder weights
//! ([`Llama`]), the upload of the loop's padded [`TokenBatch`]es, the one-pass loss/probe
//! computation ([`per_example_nll`], [`probe`]) and the AdamW step with its learning-rate
//! schedule ([`Trainer`], and [`FusedTrainer`] on the CPU). Only plain Rust values (`f32`/`f64`
//! losses, pooled embeddings as `Vec<f32>`) leave it.
//!
//! Both trainers implement [`Learner`](crate::learner::Learner) themselves, and
//! [`build_learner`] is the one place that picks the backend and the CPU kernels from a config,
//! so the loop sees a `Box<dyn Learner>` and never names burn.
//!
//! It must never know about datasets, actors, the mixture or metrics: callers hand it token
//! ids and masks and get numbers back. Everything here runs on the caller's thread (the
//! trainer's dedicated OS thread), so nothing here may block on channels or spawn tasks.
//!
//! Backend choice is generic (`B: Backend`); [`CpuBackend`] / [`CpuAutodiff`] are the
//! defaults and `CudaAutodiff` exists behind the crate's `cuda` feature.
//!
//! Speed on CPU: burn with `default-features = false` also drops burn-flex's `simd` and
//! `rayon` features (its broadcasting element-wise ops then run a scalar strided loop, ~5-8x
//! slower); depending on `burn-flex` directly with `features = ["std", "simd", "rayon"]`
//! restores them (measured 1.8x faster per training step).

mod batch;
pub mod export;
mod factory;
mod fused;
mod generate;
pub mod gguf;
mod gguf_tokenizer;
mod init;
mod llama;
mod loss;
pub mod pretrained;
mod train;

#[cfg(test)]
mod pretrained_tests;
#[cfg(test)]
mod tests;

// The learner's vocabulary, which every function here speaks, under the model's paths too.
pub use crate::learner::{ModelError, ProbeNeed, ProbeStats, StepOutput, TokenBatch};
pub use factory::{build_learner, train_hyper, BuildError};
#[doc(hidden)]
pub use fused::AttentionKernelBench;
pub use fused::FusedTrainer;
pub use generate::greedy_next;
pub use init::{
    check_init_weights, init_weights_file, load_init, InitError, WeightShape, WEIGHTS_FILE,
};
pub use llama::{Attention, DecoderLayer, Llama, LlamaConfig, Mlp};
pub use loss::{per_example_nll, probe, probe_for};
pub use pretrained::{
    load_for_training, load_pretrained, pretrained_config, pretrained_tokenizer, LoadError,
};
pub use train::{lr_at, TrainHyper, Trainer};

/// The CPU backend (burn-flex, f32 floats).
pub type CpuBackend = burn::backend::Flex;

/// The CPU backend with automatic differentiation, used for training on CPU.
pub type CpuAutodiff = burn::backend::Autodiff<CpuBackend>;

/// The CUDA backend with automatic differentiation (NVRTC kernels; libcuda is loaded at run
/// time, so a build with the `cuda` feature still starts on a machine without a GPU until a
/// CUDA device is actually used).
#[cfg(feature = "cuda")]
pub type CudaAutodiff = burn::backend::Autodiff<burn::backend::Cuda>;

/// The single CPU device of [`CpuBackend`].
pub fn cpu_device() -> burn::tensor::Device<CpuBackend> {
    Default::default()
}

/// [`crate::fsio::write_atomic`] with the error naming the file.
pub(crate) fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<(), ModelError> {
    crate::fsio::write_atomic(path, bytes).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a whole file; the error names it.
pub(crate) fn read_file(path: &std::path::Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a small JSON side file (trainer state); the error names the file.
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> Result<T, ModelError> {
    serde_json::from_slice(&read_file(path)?).map_err(|source| ModelError::State {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises a burn record (full precision, named MessagePack) and writes it atomically to
/// `path`: the one on-disk format for weights and optimiser state.
pub(crate) fn save_record<B: burn::tensor::backend::Backend, R: burn::record::Record<B>>(
    record: R,
    path: &std::path::Path,
) -> Result<(), ModelError> {
    let bytes = burn::record::Recorder::<B>::record(
        &burn::record::NamedMpkBytesRecorder::<burn::record::FullPrecisionSettings>::new(),
        record,
        (),
    )
    .map_err(|e| ModelError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Reads a record written by [`save_record`].
pub(crate) fn load_record<B: burn::tensor::backend::Backend, R: burn::record::Record<B>>(
    path: &std::path::Path,
    device: &B::Device,
) -> Result<R, ModelError> {
    let bytes = read_file(path)?;
    burn::record::Recorder::<B>::load(
        &burn::record::NamedMpkBytesRecorder::<burn::record::FullPrecisionSettings>::new(),
        bytes,
        device,
    )
    .map_err(|e| ModelError::Record {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}
