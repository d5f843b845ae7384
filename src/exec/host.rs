//! What the two CPU executors keep alike on the host: the network, its parameters and momentum,
//! both data sets, this epoch's order and the training metrics. [`HostState`] implements the
//! parts of [`Executor`](super::Executor) that do not compute anything, so each CPU executor
//! only adds how it runs a step.

use anyhow::Result;

use super::{check_tensors, Metrics};
use crate::data::{Dataset, Normalization, Split};
use crate::network::Network;

pub struct HostState {
    pub net: Network,
    pub params: Vec<Vec<f32>>,
    /// The optimizer's first state buffer per parameter: SGD's velocity, Adam's first moment.
    pub velocity: Vec<Vec<f32>>,
    /// Adam's second moment per parameter (unused by SGD).
    pub second: Vec<Vec<f32>>,
    /// Batch normalization's running statistics ([`Network::buffers`] order).
    pub buffers: Vec<Vec<f32>>,
    pub train: Dataset,
    pub test: Dataset,
    pub norm: Normalization,
    /// The run's seed (dropout masks, augmentation).
    pub seed: u64,
    /// How training images are augmented, if they are.
    pub augment: Option<crate::ops::Augment>,
    /// This epoch's order of training images.
    pub order: Vec<u32>,
    /// Training metrics since they were last taken.
    pub metrics: Metrics,
}

impl HostState {
    pub fn new(
        net: Network,
        params: Vec<Vec<f32>>,
        train: Dataset,
        test: Dataset,
        norm: Normalization,
        seed: u64,
    ) -> Self {
        let velocity: Vec<Vec<f32>> = params.iter().map(|p| vec![0.0; p.len()]).collect();
        HostState {
            buffers: net.init_buffers(),
            net,
            params,
            second: velocity.clone(),
            velocity,
            train,
            test,
            norm,
            seed,
            augment: None,
            order: Vec::new(),
            metrics: Metrics::default(),
        }
    }

    pub fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "parameter", params)?;
        for (mine, p) in self.params.iter_mut().zip(params) {
            mine.copy_from_slice(p);
        }
        self.velocity.iter_mut().for_each(|v| v.fill(0.0));
        self.second.iter_mut().for_each(|v| v.fill(0.0));
        Ok(())
    }

    pub fn set_buffers(&mut self, buffers: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.buffers, "buffer", buffers)?;
        self.buffers = buffers.to_vec();
        Ok(())
    }

    pub fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "momentum", momentum)?;
        for (v, m) in self.velocity.iter_mut().zip(momentum) {
            v.copy_from_slice(m);
        }
        Ok(())
    }

    pub fn set_second_moment(&mut self, second: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "second moment", second)?;
        for (v, m) in self.second.iter_mut().zip(second) {
            v.copy_from_slice(m);
        }
        Ok(())
    }

    pub fn begin_epoch(&mut self, order: &[u32]) {
        self.order.clear();
        self.order.extend_from_slice(order);
    }

    /// Count one training step's batch-mean loss and correct answers over `len` images.
    pub fn add_step(&mut self, loss: f32, correct: usize, len: usize) {
        self.metrics.loss_sum += loss as f64 * len as f64;
        self.metrics.correct += correct as u64;
        self.metrics.count += len as u64;
    }

    pub fn take_metrics(&mut self) -> Metrics {
        std::mem::take(&mut self.metrics)
    }

    pub fn data(&self, split: Split) -> &Dataset {
        match split {
            Split::Train => &self.train,
            Split::Test => &self.test,
        }
    }
}

/// The [`Executor`](super::Executor) methods a CPU executor hands to its `host: HostState` field
/// unchanged: parameters, momentum, the epoch order and the training metrics.
macro_rules! delegate_to_host {
    () => {
        fn network(&self) -> &$crate::network::Network {
            &self.host.net
        }
        fn set_parameters(&mut self, params: &[Vec<f32>]) -> anyhow::Result<()> {
            self.host.set_parameters(params)
        }
        fn parameters(&mut self) -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(self.host.params.clone())
        }
        fn buffers(&mut self) -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(self.host.buffers.clone())
        }
        fn set_buffers(&mut self, buffers: &[Vec<f32>]) -> anyhow::Result<()> {
            self.host.set_buffers(buffers)
        }
        fn momentum(&mut self) -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(self.host.velocity.clone())
        }
        fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> anyhow::Result<()> {
            self.host.set_momentum(momentum)
        }
        fn second_moment(&mut self) -> anyhow::Result<Vec<Vec<f32>>> {
            Ok(self.host.second.clone())
        }
        fn set_second_moment(&mut self, second: &[Vec<f32>]) -> anyhow::Result<()> {
            self.host.set_second_moment(second)
        }
        fn set_augment(&mut self, augment: Option<$crate::ops::Augment>) -> anyhow::Result<()> {
            self.host.augment = augment;
            Ok(())
        }
        fn begin_epoch(&mut self, order: &[u32]) -> anyhow::Result<()> {
            self.host.begin_epoch(order);
            Ok(())
        }
        fn take_train_metrics(&mut self) -> anyhow::Result<$crate::exec::Metrics> {
            Ok(self.host.take_metrics())
        }
    };
}
pub(crate) use delegate_to_host;
