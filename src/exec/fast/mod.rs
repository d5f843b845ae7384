//! The fast CPU executor: the same layers as [`crate::ops`], spread over all cores with
//! `rayon`, into buffers allocated once per run. It is held to the reference by
//! `tests/ops/` op by op and by `tests/network.rs` over training trajectories.
//!
//! - 3x3 stride-1 convolutions with at least 4 input channels: Winograd ([`crate::exec::fast::winograd`]).
//!   The forward pass keeps each sample's input transform for the weight gradient.
//! - Other stride-1 convolutions with fewer than 16 taps (`in * k * k`; a first layer on grey
//!   images): directly, from the padded input ([`kernels::Direct`]), which the forward pass keeps.
//! - Other convolutions: im2col + SGEMM (`matrixmultiply`). The forward pass keeps each sample's
//!   im2col matrix, `[in * k * k, out_h * out_w]`, for the weight gradient, then the input
//!   gradient reuses that memory for its columns.
//! - Dense layers: the forward pass as `W x^T` with [`winograd::gemm`], in a fixed number of
//!   blocks of inputs; a wide layer's backward pass in one sweep over its weights, strip of
//!   columns by strip ([`kernels::dense_wide_backward_block`]: input gradient, weight gradient
//!   and optimizer step, the gradient never stored). Both give each thread the same columns of
//!   the weights. Narrow layers (classifiers) have their own kernels.
//! - A ReLU, tanh or sigmoid after a convolution or dense layer is applied by it. The backward pass
//!   of an activation before a convolution or dense layer (or before a flatten before one), of a
//!   ReLU before a max pool, and of an activation before a dropout is applied by that layer's
//!   input gradient, and so is a dropout's (with the activation before it) by a dense layer after
//!   it. The folded layer itself then only hands its buffer on, as a flatten does.
//!
//! Layouts are the reference's (NCHW, PyTorch parameter layouts). Weight gradients are summed over
//! a fixed number of batch chunks (not one per thread), and a dense forward pass over a fixed
//! number of blocks of inputs, so results do not depend on how many cores there are
//! (`tests/network.rs` checks one, two and three threads).

pub mod kernels;
pub mod winograd;

use std::time::Instant;

use anyhow::Result;
use rayon::prelude::*;

use super::host::{delegate_to_host, HostState};
use super::{Diverged, Executor, Metrics, Optimizer, ProfileEntry};
use crate::data::{Dataset, Normalization, Split};
use crate::network::Network;
use crate::ops::{self as r, loss_backward_into, loss_forward};
use crate::spec::Layer;
use kernels::*;

/// The executor.
pub struct FastCpu {
    host: HostState,
    grads: Vec<Vec<f32>>,
    /// Per parameter tensor: whether the backward pass of this step has already taken its
    /// optimizer step ([`dense_backward`]).
    updated: Vec<bool>,
    capacity: usize,
    /// `acts[0]` is the input batch, `acts[i + 1]` the output of layer `i`.
    acts: Vec<Vec<f32>>,
    /// Gradients of the same tensors (for the training batch).
    d_acts: Vec<Vec<f32>>,
    /// Per convolution layer: its workspace for the whole batch.
    convs: Vec<Option<ConvWorkspace>>,
    /// Per max-pool layer: the chosen input of every output.
    argmax: Vec<Vec<u32>>,
    /// Per dropout layer: whether the last training pass kept each element (1) or not (0).
    keep: Vec<Vec<u8>>,
    /// Per dense layer: its forward pass's transposed input and output.
    dense_scratch: Vec<Vec<f32>>,
    /// Per batch normalization: the statistics of the last pass, `[mean[C], var[C]]`.
    norm_stats: Vec<Vec<f32>>,
    /// Per layer: for a convolution or dense layer followed by a ReLU, tanh or sigmoid, that
    /// activation, which the layer applies itself while its output is in cache (the
    /// activation's forward pass then only hands the buffer on; its backward pass is its own).
    epilogue: Vec<Epilogue>,
    /// Per dropout layer: the activation before it (not the network's first layer), whose
    /// backward pass the dropout's folds in (the activation's then only hands the buffer on).
    before_dropout: Vec<Epilogue>,
    /// Per layer: for a convolution or dense layer after an activation (ReLU, tanh or sigmoid;
    /// not the network's first layer), directly or through a flatten, and for a max pool after a
    /// ReLU, that activation: the layer's input gradient folds in its backward pass.
    act_before: Vec<Epilogue>,
    /// Per layer: for a dense layer after a dropout (directly or through a flatten), that
    /// dropout's index: the dense layer's input gradient folds in the dropout's backward pass
    /// (and that of the activation before it, `before_dropout`).
    dropout_before: Vec<Option<usize>>,
    /// Per layer: an activation or dropout whose backward pass the layer after it folds in (see
    /// `before_dropout`, `act_before` and `dropout_before`); its own backward pass then only
    /// hands the buffer on.
    folded: Vec<bool>,
    labels: Vec<u8>,
    /// When set, (name, calls, seconds) of every layer's forward and backward pass, then the
    /// gather, loss and optimizer; see [`FastCpu::enable_profiling`].
    profile: Option<Vec<(String, u32, f64)>>,
}

/// Add the time since `started` to entry `i` of an enabled profile.
fn record(profile: &mut Option<Vec<(String, u32, f64)>>, i: usize, started: Instant) {
    if let Some(p) = profile {
        p[i].1 += 1;
        p[i].2 += started.elapsed().as_secs_f64();
    }
}

impl FastCpu {
    /// Buffers for batches of up to `batch_size` images (evaluation runs in batches of that size
    /// too, at least 64).
    pub fn new(
        net: Network,
        params: Vec<Vec<f32>>,
        train: Dataset,
        test: Dataset,
        norm: Normalization,
        seed: u64,
        batch_size: usize,
    ) -> Self {
        let capacity = batch_size.max(64);
        let mut acts = vec![vec![0.0; capacity * net.input.len()]];
        let mut d_acts = vec![vec![0.0; capacity * net.input.len()]];
        let mut convs = Vec::new();
        let mut argmax = Vec::new();
        let mut keep = Vec::new();
        let mut dense_scratch = Vec::new();
        let mut norm_stats = Vec::new();
        for l in &net.layers {
            acts.push(vec![0.0; capacity * l.output.len()]);
            d_acts.push(vec![0.0; capacity * l.output.len()]);
            convs.push(match l.layer {
                Layer::Conv2d { .. } => Some(ConvWorkspace::new(&l.conv_shape(capacity))),
                _ => None,
            });
            dense_scratch.push(match l.layer {
                Layer::Dense { .. } => vec![0.0; dense_scratch_len(&l.dense_shape(capacity))],
                _ => Vec::new(),
            });
            norm_stats.push(match l.layer {
                Layer::BatchNorm => vec![0.0; 2 * l.input.channels],
                _ => Vec::new(),
            });
            argmax.push(if matches!(l.layer, Layer::MaxPool2d { .. }) {
                vec![0; capacity * l.output.len()]
            } else {
                Vec::new()
            });
            keep.push(if matches!(l.layer, Layer::Dropout { .. }) {
                vec![0; capacity * l.output.len()]
            } else {
                Vec::new()
            });
        }
        let kinds: Vec<&Layer> = net.layers.iter().map(|l| &l.layer).collect();
        let epilogue = (0..kinds.len())
            .map(|i| match kinds[i] {
                Layer::Conv2d { .. } | Layer::Dense { .. } => {
                    Epilogue::before(kinds.get(i + 1).copied())
                }
                _ => Epilogue::None,
            })
            .collect();
        let before_dropout: Vec<Epilogue> = (0..kinds.len())
            .map(|i| match kinds[i] {
                Layer::Dropout { .. } if i > 1 => Epilogue::before(Some(kinds[i - 1])),
                _ => Epilogue::None,
            })
            .collect();
        // The layer before layer i, looking through a flatten for convolutions and dense layers.
        let before = |i: usize| {
            let j = i.checked_sub(1)?;
            match (kinds[i], kinds[j]) {
                (Layer::Conv2d { .. } | Layer::Dense { .. }, Layer::Flatten) => j.checked_sub(1),
                _ => Some(j),
            }
        };
        let act_before: Vec<Epilogue> = (0..kinds.len())
            .map(|i| {
                let act = before(i)
                    .filter(|&j| j > 0)
                    .map_or(Epilogue::None, |j| Epilogue::before(Some(kinds[j])));
                match kinds[i] {
                    Layer::Conv2d { .. } | Layer::Dense { .. } => act,
                    Layer::MaxPool2d { .. } if act == Epilogue::Relu => act,
                    _ => Epilogue::None,
                }
            })
            .collect();
        let dropout_before: Vec<Option<usize>> = (0..kinds.len())
            .map(|i| match kinds[i] {
                Layer::Dense { .. } => {
                    before(i).filter(|&j| j > 0 && matches!(kinds[j], Layer::Dropout { .. }))
                }
                _ => None,
            })
            .collect();
        let mut folded = vec![false; kinds.len()];
        for i in 0..kinds.len() {
            if act_before[i] != Epilogue::None {
                folded[before(i).unwrap()] = true;
            }
            if before_dropout[i] != Epilogue::None {
                folded[i - 1] = true;
            }
            if let Some(j) = dropout_before[i] {
                folded[j] = true;
            }
        }
        let grads: Vec<Vec<f32>> = net.params.iter().map(|p| vec![0.0; p.len()]).collect();
        FastCpu {
            host: HostState::new(net, params, train, test, norm, seed),
            updated: vec![false; grads.len()],
            grads,
            capacity,
            acts,
            d_acts,
            convs,
            argmax,
            keep,
            dense_scratch,
            norm_stats,
            epilogue,
            before_dropout,
            act_before,
            dropout_before,
            folded,
            labels: Vec::with_capacity(capacity),
            profile: None,
        }
    }

    fn forward(&mut self, batch: usize, dropout: Option<u32>) {
        for (i, l) in self.host.net.layers.iter().enumerate() {
            let started = Instant::now();
            let fused = i > 0 && self.epilogue[i - 1] != Epilogue::None;
            if fused || matches!(l.layer, Layer::Flatten) {
                // Same values as the input (a flatten), or already computed (an activation
                // applied by the convolution before): hand the buffer on rather than copy it. The
                // backward pass hands a flatten's back, since the layer before may need its output.
                self.acts.swap(i, i + 1);
                if dropout.is_some() {
                    record(&mut self.profile, i, started);
                }
                continue;
            }
            let (before, after) = self.acts.split_at_mut(i + 1);
            let (x, y) = (
                &before[i][..batch * l.input.len()],
                &mut after[0][..batch * l.output.len()],
            );
            let bias = l.bias.map(|b| self.host.params[b].as_slice());
            match l.layer {
                Layer::Conv2d { .. } => conv2d_forward(
                    &l.conv_shape(batch),
                    x,
                    &self.host.params[l.weight.unwrap()],
                    bias,
                    self.epilogue[i],
                    y,
                    self.convs[i].as_mut().unwrap(),
                ),
                Layer::Dense { .. } => dense_forward(
                    &l.dense_shape(batch),
                    x,
                    &self.host.params[l.weight.unwrap()],
                    bias,
                    self.epilogue[i],
                    y,
                    &mut self.dense_scratch[i],
                ),
                Layer::MaxPool2d { .. } => {
                    max_pool2d_forward(&l.pool_shape(batch), x, y, &mut self.argmax[i])
                }
                Layer::AvgPool2d { .. } => avg_pool2d_forward(&l.pool_shape(batch), x, y),
                Layer::Flatten => unreachable!("handled above"),
                Layer::Relu => per_sample(l.output.len(), batch, x, y, r::relu_forward),
                Layer::Tanh => per_sample(l.output.len(), batch, x, y, tanh_forward),
                Layer::Sigmoid => per_sample(l.output.len(), batch, x, y, sigmoid_forward),
                Layer::Dropout { p } => match dropout {
                    Some(step) => {
                        let keep = &mut self.keep[i];
                        dropout_apply(l, p, self.host.seed, step, batch, x, y, keep)
                    }
                    None => y.copy_from_slice(x),
                },
                Layer::BatchNorm => {
                    let s = l.norm_shape(batch);
                    let stats = &mut self.norm_stats[i];
                    let m = l.running.unwrap();
                    let running = &mut self.host.buffers[m..m + 2];
                    if dropout.is_some() {
                        batchnorm_stats(&s, x, stats);
                        let (mean, var) = running.split_at_mut(1);
                        batchnorm_update_running(&s, stats, &mut mean[0], &mut var[0]);
                    } else {
                        stats[..s.channels].copy_from_slice(&running[0]);
                        stats[s.channels..].copy_from_slice(&running[1]);
                    }
                    let (w, b) = (l.weight.unwrap(), l.bias.unwrap());
                    let (w, b) = (&self.host.params[w], &self.host.params[b]);
                    batchnorm_forward(&s, x, w, b, stats, y);
                }
            }
            if dropout.is_some() {
                record(&mut self.profile, i, started);
            }
        }
    }

    /// With `update` (the optimizer and the step number, 1-based), the layers that can take
    /// their weights' optimizer step as soon as the gradient is ready do, and say so in
    /// `updated`.
    fn backward(&mut self, batch: usize, update: Option<(Optimizer, u64)>) {
        let layers = self.host.net.layers.len();
        for (i, l) in self.host.net.layers.iter().enumerate().rev() {
            let started = Instant::now();
            if let Layer::Flatten = l.layer {
                self.acts.swap(i, i + 1);
                self.d_acts.swap(i, i + 1);
                record(&mut self.profile, layers + i, started);
                continue;
            }
            if self.folded[i] {
                // The next layer's input gradient has been through this activation already.
                self.d_acts.swap(i, i + 1);
                record(&mut self.profile, layers + i, started);
                continue;
            }
            let x = &self.acts[i][..batch * l.input.len()];
            // What this layer's input gradient folds in: the dropout before it (and the
            // activation before that), or the activation before it.
            let fold = match self.dropout_before[i] {
                Some(j) => {
                    let Layer::Dropout { p } = self.host.net.layers[j].layer else {
                        unreachable!("dropout_before names a dropout")
                    };
                    Some(Before {
                        act: self.before_dropout[j],
                        out: &self.acts[j][..x.len()],
                        dropout: Some((1.0 / (1.0 - p), &self.keep[j][..x.len()])),
                    })
                }
                None => (self.act_before[i] != Epilogue::None).then_some(Before {
                    act: self.act_before[i],
                    out: x,
                    dropout: None,
                }),
            };
            let y = &self.acts[i + 1][..batch * l.output.len()];
            let (before, after) = self.d_acts.split_at_mut(i + 1);
            let (d_x, d_y) = (
                &mut before[i][..batch * l.input.len()],
                &after[0][..batch * l.output.len()],
            );
            let first = i == 0;
            match l.layer {
                Layer::Conv2d { .. } => {
                    let s = l.conv_shape(batch);
                    let (w, b) = (l.weight.unwrap(), l.bias);
                    let (lo, hi) = self.grads.split_at_mut(w + 1);
                    let d_bias = b.map(|b| &mut hi[b - w - 1][..]);
                    let ws = self.convs[i].as_mut().unwrap();
                    conv2d_backward_weight(&s, d_y, &mut lo[w], d_bias, ws);
                    if !first {
                        conv2d_backward_input(&s, d_y, &self.host.params[w], fold, d_x, ws);
                    }
                }
                Layer::Dense { .. } => {
                    let s = l.dense_shape(batch);
                    let (w, b) = (l.weight.unwrap(), l.bias);
                    let (lo, hi) = self.grads.split_at_mut(w + 1);
                    let d_bias = b.map(|b| &mut hi[b - w - 1][..]);
                    let update = update.map(|(opt, t)| Update {
                        opt,
                        t,
                        first: &mut self.host.velocity[w],
                        second: &mut self.host.second[w],
                    });
                    let weight = &mut self.host.params[w];
                    let d_x = (!first).then_some(d_x);
                    self.updated[w] =
                        dense_backward(&s, x, d_y, weight, fold, d_x, &mut lo[w], d_bias, update);
                }
                Layer::BatchNorm => {
                    let (w, b) = (l.weight.unwrap(), l.bias.unwrap());
                    let (lo, hi) = self.grads.split_at_mut(b);
                    let d_x = (!first).then_some(d_x);
                    let (weight, stats) = (&self.host.params[w], &self.norm_stats[i]);
                    let s = l.norm_shape(batch);
                    batchnorm_backward(&s, x, d_y, weight, stats, d_x, &mut lo[w], &mut hi[0]);
                }
                _ if first => {}
                Layer::MaxPool2d { .. } => {
                    let relu_input = fold.map(|b| b.out);
                    max_pool2d_backward(&l.pool_shape(batch), &self.argmax[i], d_y, relu_input, d_x)
                }
                Layer::AvgPool2d { .. } => avg_pool2d_backward(&l.pool_shape(batch), d_y, d_x),
                Layer::Flatten => unreachable!("handled above"),
                Layer::Relu => elementwise_backward(l, batch, y, d_y, d_x, r::relu_backward),
                Layer::Tanh => elementwise_backward(l, batch, y, d_y, d_x, r::tanh_backward),
                Layer::Sigmoid => elementwise_backward(l, batch, y, d_y, d_x, r::sigmoid_backward),
                Layer::Dropout { p } => {
                    let keep = &self.keep[i][..d_y.len()];
                    dropout_backward(p, keep, self.before_dropout[i], x, d_y, d_x)
                }
            }
            record(&mut self.profile, layers + i, started);
        }
    }
}

impl Executor for FastCpu {
    delegate_to_host!();

    fn device(&self) -> String {
        let isa = match winograd::Isa::detect() {
            winograd::Isa::Avx512 => "AVX-512",
            winograd::Isa::Avx2Fma => "AVX2",
            winograd::Isa::Portable => "portable",
        };
        // Say so where matrixmultiply's own choice differs (a cap below what the CPU has).
        let sgemm = kernels::sgemm_isa();
        let isa = if sgemm == isa {
            isa.to_string()
        } else {
            format!("{isa} (SGEMM {sgemm})")
        };
        format!(
            "CPU (Winograd, direct and im2col + SGEMM convolutions, {isa}, {} threads)",
            rayon::current_num_threads()
        )
    }

    fn test_logits(&mut self) -> Result<Vec<f32>> {
        let classes = self.host.net.classes();
        let mut logits = Vec::with_capacity(self.host.test.len() * classes);
        let all: Vec<u32> = (0..self.host.test.len() as u32).collect();
        for chunk in all.chunks(self.capacity) {
            gather(
                &self.host.test,
                chunk,
                self.host.norm,
                None,
                &mut self.acts[0],
                &mut self.labels,
            );
            self.forward(chunk.len(), None);
            logits.extend_from_slice(&self.acts.last().unwrap()[..chunk.len() * classes]);
        }
        Ok(logits)
    }

    fn train_step(&mut self, start: usize, len: usize, step: u32, opt: Optimizer) -> Result<()> {
        anyhow::ensure!(
            len >= 1 && len <= self.capacity,
            "a batch of {len}: this executor was built for up to {}",
            self.capacity
        );
        // The whole step on one of rayon's workers: each op's parallel loop then starts inside
        // the pool (one piece of work runs inline) instead of handing the op to the pool and
        // waiting for it, about 5-10 us an op; the `batch1` preset's step was mostly that.
        let mut result = Ok(());
        rayon::scope(|_| result = self.train_step_here(start, len, step, opt));
        result
    }

    fn evaluate(&mut self, split: Split) -> Result<Metrics> {
        let len = self.host.data(split).len();
        let classes = self.host.net.classes();
        let mut metrics = Metrics::default();
        let all: Vec<u32> = (0..len as u32).collect();
        for chunk in all.chunks(self.capacity) {
            gather(
                self.host.data(split),
                chunk,
                self.host.norm,
                None,
                &mut self.acts[0],
                &mut self.labels,
            );
            self.forward(chunk.len(), None);
            let logits = &self.acts.last().unwrap()[..chunk.len() * classes];
            metrics.loss_sum += loss_forward(self.host.net.loss(), classes, logits, &self.labels)
                as f64
                * chunk.len() as f64;
            metrics.correct += r::count_correct(classes, logits, &self.labels) as u64;
            metrics.count += chunk.len() as u64;
        }
        Ok(metrics)
    }

    fn enable_profiling(&mut self) -> Result<()> {
        let layers = &self.host.net.layers;
        let mut entries: Vec<String> = layers
            .iter()
            .map(|l| format!("{} {} forward", l.index, l.layer))
            .collect();
        entries.extend(
            layers
                .iter()
                .map(|l| format!("{} {} backward", l.index, l.layer)),
        );
        entries.extend(["gather".into(), "loss".into(), "sgd".into()]);
        self.profile = Some(entries.into_iter().map(|e| (e, 0, 0.0)).collect());
        Ok(())
    }

    fn profile(&self) -> Vec<ProfileEntry> {
        let Some(p) = self.profile.as_ref() else {
            return Vec::new();
        };
        let l = self.host.net.layers.len();
        let mut order: Vec<_> = p[2 * l..2 * l + 1].to_vec(); // gather
        order.extend_from_slice(&p[..l]);
        order.push(p[2 * l + 1].clone()); // loss
        order.extend(p[l..2 * l].iter().rev().cloned());
        order.push(p[2 * l + 2].clone()); // sgd
        order
            .into_iter()
            .map(|(name, calls, seconds)| ProfileEntry {
                name,
                calls,
                seconds,
                flops: 0.0,
                bytes: 0.0,
            })
            .collect()
    }

    fn profile_method(&self) -> String {
        "each layer's pass timed between ops; steps computed as without profiling".into()
    }
}

impl FastCpu {
    /// [`Executor::train_step`] on the current thread (a rayon worker).
    fn train_step_here(
        &mut self,
        start: usize,
        len: usize,
        step: u32,
        opt: Optimizer,
    ) -> Result<()> {
        let layers = self.host.net.layers.len();
        let started = Instant::now();
        let h = &self.host;
        let indices = &h.order[start..start + len];
        let augment = h
            .augment
            .as_ref()
            .map(|a| (a, r::augment_seed(h.seed), step));
        let (x, labels) = (&mut self.acts[0], &mut self.labels);
        gather(&h.train, indices, h.norm, augment, x, labels);
        record(&mut self.profile, 2 * layers, started);
        self.forward(len, Some(step));
        let started = Instant::now();
        let classes = self.host.net.classes();
        let logits = &self.acts.last().unwrap()[..len * classes];
        let loss = loss_forward(self.host.net.loss(), classes, logits, &self.labels);
        if !loss.is_finite() {
            return Err(Diverged { step, loss }.into());
        }
        let correct = r::count_correct(classes, logits, &self.labels);
        loss_backward_into(
            self.host.net.loss(),
            classes,
            logits,
            &self.labels,
            &mut self.d_acts.last_mut().unwrap()[..len * classes],
        );
        record(&mut self.profile, 2 * layers + 1, started);
        self.backward(len, Some((opt, step as u64 + 1)));
        let started = Instant::now();
        // In pieces, so that one large tensor (a dense layer's weight) is shared by all cores.
        const PIECE: usize = 1 << 14;
        let h = &mut self.host;
        let params = h.params.iter_mut().zip(&self.grads);
        let tensors = params.zip(h.velocity.iter_mut().zip(&mut h.second));
        for (((p, g), (m, v)), updated) in tensors.zip(&mut self.updated) {
            if std::mem::take(updated) {
                continue; // taken by the backward pass
            }
            p.par_chunks_mut(PIECE)
                .zip(g.par_chunks(PIECE))
                .zip(m.par_chunks_mut(PIECE).zip(v.par_chunks_mut(PIECE)))
                .for_each(|((p, g), (m, v))| opt.update(step as u64 + 1, p, g, m, v));
        }
        record(&mut self.profile, 2 * layers + 2, started);
        self.host.add_step(loss, correct, len);
        Ok(())
    }
}
