//! The seam between a model and the hardware that runs it. A [`crate::network::Network`] says what
//! to compute; an [`Executor`] owns the data, the parameters and the optimizer state on its device
//! and runs training steps and evaluation. The training loop (`crate::train`) only talks to this
//! trait, so the CPU reference and the GPU executor share one model definition and one loop.

use anyhow::Result;

use crate::data::Split;
use crate::network::Network;

/// Loss and accuracy accumulated over some images.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Metrics {
    /// Sum over batches of (batch mean loss x batch size).
    pub loss_sum: f64,
    pub correct: u64,
    pub count: u64,
}

impl Metrics {
    pub fn mean_loss(&self) -> f64 {
        self.loss_sum / self.count.max(1) as f64
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.count.max(1) as f64
    }
}

/// Hyper-parameters of one SGD step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sgd {
    pub lr: f32,
    pub momentum: f32,
}

/// The loss of a training step was not finite; `step` is the global step number (0-based).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the training loss became {loss} at step {step}")]
pub struct Diverged {
    pub step: u32,
    pub loss: f32,
}

/// Runs one network's training and evaluation on some device.
pub trait Executor {
    /// What it runs on, for reports: e.g. "CPU reference" or "llvmpipe (Vulkan, Cpu)".
    fn device(&self) -> String;

    fn network(&self) -> &Network;

    /// Replace the parameters (PyTorch layouts, in [`Network::params`] order) and zero the
    /// optimizer's momentum.
    fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()>;

    /// Read the parameters back.
    fn parameters(&mut self) -> Result<Vec<Vec<f32>>>;

    /// The SGD momentum buffers, in parameter order (what `--resume` restores).
    fn momentum(&mut self) -> Result<Vec<Vec<f32>>>;

    /// Replace the SGD momentum buffers.
    fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()>;

    /// The logits of every test image, `[test images, classes]` row by row, dropout off.
    fn test_logits(&mut self) -> Result<Vec<f32>>;

    /// The order in which training images are visited this epoch (indices into the training set).
    fn begin_epoch(&mut self, order: &[u32]) -> Result<()>;

    /// One SGD step on the images `order[start..start + len]`. `step` counts steps from the start
    /// of training; it seeds dropout masks. An executor may run steps asynchronously: a loss that
    /// is not finite is reported as [`Diverged`] from this call or from the next
    /// [`Executor::take_train_metrics`], naming the step where it happened.
    fn train_step(&mut self, start: usize, len: usize, step: u32, sgd: Sgd) -> Result<()>;

    /// Training loss and accuracy accumulated since the last call; resets them.
    fn take_train_metrics(&mut self) -> Result<Metrics>;

    /// Loss and accuracy over a whole split, dropout off, parameters unchanged.
    fn evaluate(&mut self, split: Split) -> Result<Metrics>;
}

/// Check that `tensors` (parameters, or momentum: `what` names them in errors) has one tensor per
/// parameter of `net`, each of its length. Every executor's `set_parameters` and `set_momentum`
/// start here.
pub fn check_tensors(net: &Network, what: &str, tensors: &[Vec<f32>]) -> Result<()> {
    anyhow::ensure!(
        tensors.len() == net.params.len(),
        "{} {what} tensors, expected {}",
        tensors.len(),
        net.params.len()
    );
    for (info, t) in net.params.iter().zip(tensors) {
        anyhow::ensure!(
            t.len() == info.len(),
            "{what} {}: {} values, expected {}",
            info.name,
            t.len(),
            info.len()
        );
    }
    Ok(())
}
