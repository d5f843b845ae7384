//! The CPU reference executor: runs a [`Network`] layer by layer with the plain loops of
//! [`crate::ops`]. [`network_forward`] and [`network_backward`] are generic over the float
//! type, so the same code trains in f32 and checks gradients in f64.

use anyhow::Result;
use num_traits::Float;

use super::host::{delegate_to_host, HostState};
use super::{Diverged, Executor, Metrics, Optimizer};
use crate::data::{Dataset, Normalization, Split};
use crate::network::{dropout_seed, Network};
use crate::ops::{self as r, gather_batch, loss_backward, loss_forward};
use crate::spec::Layer;

/// Dropout state of one pass: `None` at evaluation (dropout is the identity), else the run seed
/// and the global step number.
pub type DropoutKey = Option<(u64, u32)>;

/// Forward through every layer. Returns the activations: `[0]` is the input, `[i + 1]` the output
/// of layer `i`; the last one holds the logits `[batch, classes]`. A training pass (`dropout` is
/// `Some`) normalizes with batch statistics; an evaluation pass with the running statistics in
/// `buffers` ([`Network::buffers`] order).
pub fn network_forward<T: Float>(
    net: &Network,
    params: &[Vec<T>],
    buffers: &[Vec<T>],
    input: Vec<T>,
    batch: usize,
    dropout: DropoutKey,
) -> Vec<Vec<T>> {
    let mut activations = vec![input];
    for l in &net.layers {
        let x = activations.last().expect("the input is always there");
        let mut y = vec![T::zero(); batch * l.output.len()];
        let bias = l.bias.map(|b| params[b].as_slice());
        match l.layer {
            Layer::Conv2d { .. } => r::conv2d_forward(
                &l.conv_shape(batch),
                x,
                &params[l.weight.unwrap()],
                bias,
                &mut y,
            ),
            Layer::MaxPool2d { .. } => r::max_pool2d_forward(&l.pool_shape(batch), x, &mut y),
            Layer::AvgPool2d { .. } => r::avg_pool2d_forward(&l.pool_shape(batch), x, &mut y),
            Layer::Flatten => y.copy_from_slice(x),
            Layer::Dense { .. } => r::dense_forward(
                &l.dense_shape(batch),
                x,
                &params[l.weight.unwrap()],
                bias,
                &mut y,
            ),
            Layer::Relu => r::relu_forward(x, &mut y),
            Layer::Tanh => r::tanh_forward(x, &mut y),
            Layer::Sigmoid => r::sigmoid_forward(x, &mut y),
            Layer::Dropout { p } => match dropout {
                Some((seed, step)) => {
                    r::dropout_forward(p, dropout_seed(seed, l.index), step, x, &mut y)
                }
                None => y.copy_from_slice(x),
            },
            Layer::BatchNorm => {
                let (s, w, b) = (l.norm_shape(batch), l.weight.unwrap(), l.bias.unwrap());
                let (w, b) = (&params[w], &params[b]);
                match (dropout, l.running) {
                    (Some(_), _) => r::batchnorm_forward(&s, x, w, b, &mut y),
                    (None, Some(m)) => {
                        let (mean, var) = (&buffers[m], &buffers[m + 1]);
                        r::batchnorm_forward_eval(&s, x, w, b, mean, var, &mut y)
                    }
                    (None, None) => unreachable!("a batch normalization has running statistics"),
                }
            }
        }
        activations.push(y);
    }
    activations
}

/// Backward through every layer, from the gradient of the loss with respect to the logits.
/// Returns one gradient per parameter tensor, in [`Network::params`] order.
pub fn network_backward<T: Float>(
    net: &Network,
    params: &[Vec<T>],
    activations: &[Vec<T>],
    d_logits: Vec<T>,
    batch: usize,
    dropout: DropoutKey,
) -> Vec<Vec<T>> {
    let mut grads: Vec<Vec<T>> = net
        .params
        .iter()
        .map(|p| vec![T::zero(); p.len()])
        .collect();
    let mut d_y = d_logits;
    for (i, l) in net.layers.iter().enumerate().rev() {
        let (x, y) = (&activations[i], &activations[i + 1]);
        let mut d_x = vec![T::zero(); x.len()];
        match l.layer {
            Layer::Conv2d { .. } => {
                let s = l.conv_shape(batch);
                let w = l.weight.unwrap();
                let mut d_w = std::mem::take(&mut grads[w]);
                let mut d_b = l.bias.map(|b| std::mem::take(&mut grads[b]));
                r::conv2d_backward_weight(&s, x, &d_y, &mut d_w, d_b.as_deref_mut());
                if i > 0 {
                    r::conv2d_backward_input(&s, &d_y, &params[w], &mut d_x);
                }
                grads[w] = d_w;
                if let (Some(b), Some(d_b)) = (l.bias, d_b) {
                    grads[b] = d_b;
                }
            }
            Layer::MaxPool2d { .. } => {
                r::max_pool2d_backward(&l.pool_shape(batch), x, &d_y, &mut d_x)
            }
            Layer::AvgPool2d { .. } => r::avg_pool2d_backward(&l.pool_shape(batch), &d_y, &mut d_x),
            Layer::Flatten => d_x.copy_from_slice(&d_y),
            Layer::Dense { .. } => {
                let s = l.dense_shape(batch);
                let w = l.weight.unwrap();
                let mut d_w = std::mem::take(&mut grads[w]);
                let mut d_b = l.bias.map(|b| std::mem::take(&mut grads[b]));
                r::dense_backward_weight(&s, x, &d_y, &mut d_w, d_b.as_deref_mut());
                if i > 0 {
                    r::dense_backward_input(&s, &d_y, &params[w], &mut d_x);
                }
                grads[w] = d_w;
                if let (Some(b), Some(d_b)) = (l.bias, d_b) {
                    grads[b] = d_b;
                }
            }
            Layer::Relu => r::relu_backward(y, &d_y, &mut d_x),
            Layer::Tanh => r::tanh_backward(y, &d_y, &mut d_x),
            Layer::Sigmoid => r::sigmoid_backward(y, &d_y, &mut d_x),
            Layer::Dropout { p } => match dropout {
                Some((seed, step)) => {
                    r::dropout_backward(p, dropout_seed(seed, l.index), step, &d_y, &mut d_x)
                }
                None => d_x.copy_from_slice(&d_y),
            },
            Layer::BatchNorm => {
                let (w, b) = (l.weight.unwrap(), l.bias.unwrap());
                let (mut d_w, mut d_b) =
                    (std::mem::take(&mut grads[w]), std::mem::take(&mut grads[b]));
                let d_x = (i > 0).then_some(&mut d_x[..]);
                r::batchnorm_backward(
                    &l.norm_shape(batch),
                    x,
                    &d_y,
                    &params[w],
                    d_x,
                    &mut d_w,
                    &mut d_b,
                );
                (grads[w], grads[b]) = (d_w, d_b);
            }
        }
        d_y = d_x;
    }
    grads
}

/// After a training step: move every batch normalization's running statistics towards the
/// statistics of its input in `activations` (from [`network_forward`]'s training pass).
pub fn update_running_stats<T: Float>(
    net: &Network,
    activations: &[Vec<T>],
    buffers: &mut [Vec<T>],
    batch: usize,
) {
    for (i, l) in net.layers.iter().enumerate() {
        if let Some(m) = l.running {
            let (mean, var) = buffers[m..].split_at_mut(1);
            r::batchnorm_update_running(
                &l.norm_shape(batch),
                &activations[i],
                &mut mean[0],
                &mut var[0],
            );
        }
    }
}

/// The CPU reference executor: the specification, run as it is written.
pub struct CpuReference {
    host: HostState,
}

/// Evaluation runs in batches of this many images (any size gives the same answer).
const EVAL_BATCH: usize = 256;

impl CpuReference {
    pub fn new(
        net: Network,
        params: Vec<Vec<f32>>,
        train: Dataset,
        test: Dataset,
        norm: Normalization,
        seed: u64,
    ) -> Self {
        CpuReference {
            host: HostState::new(net, params, train, test, norm, seed),
        }
    }

    /// One forward and backward pass: returns (batch-mean loss, correct count, gradients, the
    /// activations).
    pub fn forward_backward(
        &self,
        images: Vec<f32>,
        labels: &[u8],
        step: u32,
    ) -> (f32, usize, Vec<Vec<f32>>, Vec<Vec<f32>>) {
        let (net, params) = (&self.host.net, &self.host.params);
        let batch = labels.len();
        let dropout = Some((self.host.seed, step));
        let activations = network_forward(net, params, &[], images, batch, dropout);
        let logits = activations.last().unwrap();
        let classes = net.classes();
        let loss = loss_forward(net.loss(), classes, logits, labels);
        let correct = r::count_correct(classes, logits, labels);
        let d_logits = loss_backward(net.loss(), classes, logits, labels);
        let grads = network_backward(net, params, &activations, d_logits, batch, dropout);
        (loss, correct, grads, activations)
    }
}

impl Executor for CpuReference {
    fn device(&self) -> String {
        "CPU reference (plain loops, one thread)".to_string()
    }

    delegate_to_host!();

    fn test_logits(&mut self) -> Result<Vec<f32>> {
        let h = &self.host;
        let mut logits = Vec::with_capacity(h.test.len() * h.net.classes());
        let all: Vec<u32> = (0..h.test.len() as u32).collect();
        for chunk in all.chunks(EVAL_BATCH) {
            let (images, _) = gather_batch(&h.test, chunk, h.norm);
            let activations =
                network_forward(&h.net, &h.params, &h.buffers, images, chunk.len(), None);
            logits.extend_from_slice(activations.last().unwrap());
        }
        Ok(logits)
    }

    fn train_step(&mut self, start: usize, len: usize, step: u32, opt: Optimizer) -> Result<()> {
        let h = &self.host;
        let indices = &h.order[start..start + len];
        let (images, labels) = match &h.augment {
            Some(a) => {
                let seed = r::augment_seed(h.seed);
                r::gather_batch_augmented(&h.train, indices, h.norm, a, seed, step)
            }
            None => gather_batch(&h.train, indices, h.norm),
        };
        let (loss, correct, grads, activations) = self.forward_backward(images, &labels, step);
        if !loss.is_finite() {
            return Err(Diverged { step, loss }.into());
        }
        let h = &mut self.host;
        update_running_stats(&h.net, &activations, &mut h.buffers, len);
        let params = h.params.iter_mut().zip(&grads);
        for ((p, g), (m, v)) in params.zip(h.velocity.iter_mut().zip(&mut h.second)) {
            opt.update(step as u64 + 1, p, g, m, v);
        }
        h.add_step(loss, correct, len);
        Ok(())
    }

    fn evaluate(&mut self, split: Split) -> Result<Metrics> {
        let h = &self.host;
        let data = h.data(split);
        let mut metrics = Metrics::default();
        let all: Vec<u32> = (0..data.len() as u32).collect();
        for chunk in all.chunks(EVAL_BATCH) {
            let (images, labels) = gather_batch(data, chunk, h.norm);
            let activations =
                network_forward(&h.net, &h.params, &h.buffers, images, chunk.len(), None);
            let logits = activations.last().unwrap();
            let loss = loss_forward(h.net.loss(), h.net.classes(), logits, &labels);
            metrics.loss_sum += loss as f64 * chunk.len() as f64;
            metrics.correct += r::count_correct(h.net.classes(), logits, &labels) as u64;
            metrics.count += chunk.len() as u64;
        }
        Ok(metrics)
    }
}
