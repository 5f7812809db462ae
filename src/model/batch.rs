//! The (single) upload of a host [`TokenBatch`] to the device. The batch itself is the
//! learner's plain type; the tensors it becomes are the model's, so the upload lives here.

use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::TokenBatch;

/// A [`TokenBatch`] as tensors on a burn device.
pub(crate) trait BatchTensors {
    /// Input ids `[batch, len]` on `device`.
    fn tokens_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int>;

    /// [`TokenBatch::shifted_target_ids`] uploaded once, so the device needs no slicing: the
    /// target ids `[batch, len, 1]` and their mask `[batch, len]`.
    fn shifted_targets<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 3, Int>, Tensor<B, 2>);
}

impl BatchTensors for TokenBatch {
    fn tokens_tensor<B: Backend>(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        Tensor::from_data(
            TensorData::new(self.tokens.clone(), [self.batch, self.len]),
            device,
        )
    }

    fn shifted_targets<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 3, Int>, Tensor<B, 2>) {
        let (b, t) = (self.batch, self.len);
        let (ids, mask) = self.shifted_target_ids();
        (
            Tensor::from_data(TensorData::new(ids, [b, t, 1]), device),
            Tensor::from_data(TensorData::new(mask, [b, t]), device),
        )
    }
}
