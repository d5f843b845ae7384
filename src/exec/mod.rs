//! The seam between a model and the hardware that runs it. A [`crate::network::Network`] says what
//! to compute; an [`Executor`] owns the data, the parameters and the optimizer state on its device
//! and runs training steps and evaluation. The training loop (`crate::train`) and the benchmark
//! only talk to this trait, so every executor shares one model definition and one loop.
//!
//! The executors, one folder each:
//! - [`reference`](mod@reference): the plain loops of [`crate::ops`] run as written, one thread: the specification.
//! - [`fast`]: the fast CPU executor (Winograd, SGEMM, rayon), checked against the reference.
//! - [`gpu`]: the WGSL kernels of `shaders/` through wgpu; [`gpu::plan`] lists each layer's
//!   dispatches once, for the executor and the op tests alike.
//!
//! [`host`] holds what the two CPU executors keep alike on the host (parameters, momentum, data,
//! epoch order, metrics).

pub mod fast;
pub mod gpu;
pub mod host;
pub mod reference;

use anyhow::Result;

use crate::data::Split;
use crate::network::{Network, ParamInfo};

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

/// The update rule: PyTorch's `torch.optim.SGD` (with momentum), `Adam` or `AdamW`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OptimizerKind {
    #[default]
    Sgd,
    Adam,
    #[value(name = "adamw")]
    AdamW,
}

impl std::fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OptimizerKind::Sgd => "sgd",
            OptimizerKind::Adam => "adam",
            OptimizerKind::AdamW => "adamw",
        })
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sgd" => Ok(OptimizerKind::Sgd),
            "adam" => Ok(OptimizerKind::Adam),
            "adamw" => Ok(OptimizerKind::AdamW),
            other => Err(format!("'{other}': expected sgd, adam or adamw")),
        }
    }
}

/// The optimizer's hyper-parameters for one step (the learning rate already scheduled).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Optimizer {
    pub kind: OptimizerKind,
    pub lr: f32,
    /// SGD's momentum.
    pub momentum: f32,
    /// Adam's `betas` and `eps`.
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    /// L2 penalty (SGD, Adam) or decoupled decay (AdamW); 0 for none.
    pub weight_decay: f32,
}

impl Optimizer {
    /// SGD with momentum, no weight decay.
    pub fn sgd(lr: f32, momentum: f32) -> Optimizer {
        Optimizer {
            kind: OptimizerKind::Sgd,
            lr,
            momentum,
            ..Optimizer::default()
        }
    }

    /// The same optimizer with another learning rate.
    pub fn with_lr(self, lr: f32) -> Optimizer {
        Optimizer { lr, ..self }
    }

    /// Apply step `t` (1-based: the number of updates so far, this one included) to one
    /// parameter tensor, with its two state buffers (SGD uses the first: the velocity; Adam both:
    /// the first and second moments). The reference and the fast CPU executor both call this.
    pub fn update(
        &self,
        t: u64,
        param: &mut [f32],
        grad: &[f32],
        first: &mut [f32],
        second: &mut [f32],
    ) {
        match self.kind {
            OptimizerKind::Sgd => crate::ops::sgd_update(
                self.lr,
                self.momentum,
                self.weight_decay,
                param,
                grad,
                first,
            ),
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                crate::ops::adam_update(&self.adam_step(t), param, grad, first, second)
            }
        }
    }

    /// The scalars of Adam step `t`.
    pub fn adam_step(&self, t: u64) -> crate::ops::AdamStep {
        crate::ops::AdamStep::new(
            self.lr,
            self.beta1,
            self.beta2,
            self.eps,
            self.weight_decay,
            self.kind == OptimizerKind::AdamW,
            t,
        )
    }
}

impl Default for Optimizer {
    /// PyTorch's defaults: SGD without momentum at lr 0.01; Adam's betas (0.9, 0.999), eps 1e-8.
    fn default() -> Self {
        Optimizer {
            kind: OptimizerKind::Sgd,
            lr: 0.01,
            momentum: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// The loss of a training step was not finite; `step` is the global step number (0-based).
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the training loss became {loss} at step {step}")]
pub struct Diverged {
    pub step: u32,
    pub loss: f32,
}

/// One line of a per-op profile of training steps: what ran, how often, for how long in all.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileEntry {
    pub name: String,
    pub calls: u32,
    pub seconds: f64,
    /// Floating-point operations and bytes moved at the least over all calls, where the
    /// executor knows them (0 where it does not).
    pub flops: f64,
    pub bytes: f64,
}

/// Runs one network's training and evaluation on some device.
pub trait Executor {
    /// What it runs on, for reports: e.g. "CPU reference" or "llvmpipe (Vulkan, Cpu)".
    fn device(&self) -> String;

    fn network(&self) -> &Network;

    /// Replace the parameters (PyTorch layouts, in [`Network::params`] order) and zero the
    /// optimizer's state.
    fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()>;

    /// Read the parameters back.
    fn parameters(&mut self) -> Result<Vec<Vec<f32>>>;

    /// Batch normalization's running statistics, in [`Network::buffers`] order (empty for a
    /// network without batch normalization).
    fn buffers(&mut self) -> Result<Vec<Vec<f32>>>;

    /// Replace the running statistics.
    fn set_buffers(&mut self, buffers: &[Vec<f32>]) -> Result<()>;

    /// The optimizer's first state buffers, in parameter order: SGD's momentum (velocity), or
    /// Adam's first moment (`exp_avg`). What `--resume` restores, with [`Executor::second_moment`].
    fn momentum(&mut self) -> Result<Vec<Vec<f32>>>;

    /// Replace the first state buffers.
    fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()>;

    /// Adam's second moment (`exp_avg_sq`), in parameter order (zeros under SGD).
    fn second_moment(&mut self) -> Result<Vec<Vec<f32>>>;

    /// Replace the second moment buffers.
    fn set_second_moment(&mut self, second: &[Vec<f32>]) -> Result<()>;

    /// The logits of every test image, `[test images, classes]` row by row, dropout off.
    fn test_logits(&mut self) -> Result<Vec<f32>>;

    /// Augment each training image from now on (`None`: train on them as they are), with the
    /// transforms of [`crate::ops::augment`] drawn from the run's seed and the step. Evaluation
    /// and the test set never are.
    fn set_augment(&mut self, augment: Option<crate::ops::Augment>) -> Result<()>;

    /// The order in which training images are visited this epoch (indices into the training set).
    fn begin_epoch(&mut self, order: &[u32]) -> Result<()>;

    /// One optimizer step on the images `order[start..start + len]`. `step` counts steps from the
    /// start of training (0-based); it seeds dropout masks, and `step + 1` is Adam's step count.
    /// An executor may run steps asynchronously: a loss that is not finite is reported as
    /// [`Diverged`] from this call or from the next [`Executor::take_train_metrics`], naming the
    /// step where it happened.
    fn train_step(&mut self, start: usize, len: usize, step: u32, opt: Optimizer) -> Result<()>;

    /// Training loss and accuracy accumulated since the last call; resets them.
    fn take_train_metrics(&mut self) -> Result<Metrics>;

    /// Loss and accuracy over a whole split, dropout off, parameters unchanged.
    fn evaluate(&mut self, split: Split) -> Result<Metrics>;

    /// From now on, time every op of each training step (see [`Executor::profile`]). The steps
    /// compute exactly what they compute without profiling. An executor without a per-op
    /// profile says so.
    fn enable_profiling(&mut self) -> Result<()> {
        anyhow::bail!("{} has no per-op profile", self.device())
    }

    /// The profile since [`Executor::enable_profiling`], in the order of a training step; empty
    /// when profiling is off.
    fn profile(&self) -> Vec<ProfileEntry> {
        Vec::new()
    }

    /// How the profile was taken, for its heading (e.g. "each kernel on its own, with a wait").
    fn profile_method(&self) -> String {
        String::new()
    }
}

/// Check that `tensors` (parameters, momentum or buffers: `what` names them in errors) has one
/// tensor per entry of `infos` ([`Network::params`] or [`Network::buffers`]), each of its length.
/// Every executor's `set_parameters`, `set_momentum` and `set_buffers` start here.
pub fn check_tensors(infos: &[ParamInfo], what: &str, tensors: &[Vec<f32>]) -> Result<()> {
    anyhow::ensure!(
        tensors.len() == infos.len(),
        "{} {what} tensors, expected {}",
        tensors.len(),
        infos.len()
    );
    for (info, t) in infos.iter().zip(tensors) {
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
