//! The GPU executor: the same [`Network`] as the CPU reference, run by the WGSL kernels of
//! `shaders/`.
//!
//! Everything lives on the GPU for the whole run: both data sets (as u8), the activations and
//! their gradients, the parameters, gradients and momentum, allocated once when the executor is
//! made. A training step writes 16 bytes of per-step words (batch size, step, offset into this epoch's
//! order), then encodes a fixed list of dispatches (gather the batch, forward, loss, backward,
//! SGD, accumulate metrics) and submits it. Loss and accuracy accumulate on the GPU and are read
//! back only when asked for (once per epoch, or every N steps for progress).

pub mod context;
pub mod kernels;
pub mod ops;
pub mod plan;

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::{bail, Result};

pub use context::{AdapterChoice, Gpu};
pub use kernels::Kernels;

use crate::data::{Dataset, Normalization, Split, IMAGE_PIXELS};
use crate::exec::{
    check_tensors, Diverged, Executor, Metrics, Optimizer, OptimizerKind, ProfileEntry,
};
use crate::network::Network;
use crate::spec::Layer;
use kernels::METRICS_WORDS;

/// How many test images an evaluation step takes at most (less where the GPU's storage-binding
/// limit says so).
const EVAL_BATCH: usize = 256;
/// Steps in flight before the host waits for the oldest: bounds the queue without stalling it.
const MAX_IN_FLIGHT: usize = 16;

/// Per-dispatch timings of training steps, and the GPU timer when the device has one.
struct Profile {
    entries: Vec<ProfileEntry>,
    timer: Option<Timer>,
}

/// Timestamp queries around every dispatch of a training step: written on the GPU, resolved into
/// a buffer and read back once per step.
struct Timer {
    queries: wgpu::QuerySet,
    resolved: wgpu::Buffer,
    /// Nanoseconds per timestamp tick.
    period_ns: f64,
}

/// A dispatch of the training or evaluation plan, with its pipeline and the bind group it runs
/// with.
#[derive(Clone)]
struct Planned {
    dispatch: plan::Dispatch,
    pipeline: Arc<wgpu::ComputePipeline>,
    bind_group: usize,
}

pub struct GpuExecutor {
    gpu: Arc<Gpu>,
    kernels: Arc<Kernels>,
    net: Network,
    batch_capacity: usize,
    eval_batch: usize,
    train_len: usize,
    test_len: usize,
    step_words: wgpu::Buffer,
    order: wgpu::Buffer,
    /// Where each parameter tensor lies in `params`, `velocity` and `second` (and the gradients).
    arena: Arena,
    /// Every parameter tensor, one after another (see [`Arena`]).
    params: wgpu::Buffer,
    /// Where each running statistic lies in `running`.
    running_arena: Arena,
    /// Batch normalization's running statistics, updated by its kernels while training.
    running: wgpu::Buffer,
    /// The optimizer's state, laid out as `params`: SGD's velocity or Adam's first moment, and
    /// Adam's second moment.
    velocity: wgpu::Buffer,
    second: wgpu::Buffer,
    sgd_constants: wgpu::Buffer,
    /// Adam's per-step scalars, shared by every parameter's update.
    adam_step: wgpu::Buffer,
    /// The optimizer the SGD constants were last written for.
    sgd: Option<Optimizer>,
    /// The optimizer dispatch of a training step for SGD and for Adam(W) (one for all the
    /// parameters either way); the current one ends `train_plan`.
    optimizer_plans: [Vec<Planned>; 2],
    /// Whether `train_plan` ends with the Adam dispatches.
    adam_planned: bool,
    train_metrics: wgpu::Buffer,
    eval_metrics: wgpu::Buffer,
    logits: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    train_plan: Vec<Planned>,
    eval_plan: Vec<Planned>,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
    /// The run's seed and normalisation, for the augmented gather's pipeline.
    seed: u64,
    norm: Normalization,
    /// When set, every dispatch of a training step is timed (see [`Executor::enable_profiling`]).
    profile: Option<Profile>,
}

/// All the parameter tensors in one buffer (and their gradients, momentum and second moment in
/// three more laid out the same way), each starting at a multiple of the device's storage-offset
/// alignment so that a layer binds its weight and bias as ranges of it. The optimizer then
/// updates every parameter in one dispatch over the whole buffer instead of one per tensor; the
/// gaps between tensors hold zeros, which SGD, Adam and weight decay leave at zero.
struct Arena {
    /// Offset in f32 words and length of each parameter tensor.
    slots: Vec<(usize, usize)>,
    /// Total length in words, gaps included.
    words: usize,
}

impl Arena {
    fn new(net: &Network, align_bytes: u64) -> Arena {
        // At least 4 values: the optimizer kernels take 4 at a time.
        let align = (align_bytes as usize / 4).max(4);
        let mut words = 0;
        let slots = net
            .params
            .iter()
            .map(|info| {
                let slot = (words, info.len());
                words = (words + info.len()).next_multiple_of(align);
                slot
            })
            .collect();
        Arena {
            slots,
            words: words.max(4),
        }
    }

    /// The running statistics ([`Network::buffers`]): each batch normalization's mean and
    /// variance side by side, the pair starting at an aligned offset, so the layer binds both as
    /// one range (see [`Arena::pair_binding`]).
    fn for_buffers(net: &Network, align_bytes: u64) -> Arena {
        let align = (align_bytes as usize / 4).max(4);
        let mut slots = vec![(0, 0); net.buffers.len()];
        let mut words = 0;
        for m in net.layers.iter().filter_map(|l| l.running) {
            let c = net.buffers[m].len();
            slots[m] = (words, c);
            slots[m + 1] = (words + c, c);
            words = (words + 2 * c).next_multiple_of(align);
        }
        Arena {
            slots,
            words: words.max(4),
        }
    }

    /// Tensors `p` and `p + 1` as one range of `buffer` (a batch normalization's running mean
    /// and variance).
    fn pair_binding<'a>(&self, buffer: &'a wgpu::Buffer, p: usize) -> wgpu::BindingResource<'a> {
        let (offset, len) = self.slots[p];
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 4 * offset as u64,
            size: wgpu::BufferSize::new(4 * 2 * len.max(1) as u64),
        })
    }

    /// Parameter `p`'s range of `buffer`, for a bind group.
    fn binding<'a>(&self, buffer: &'a wgpu::Buffer, p: usize) -> wgpu::BindingResource<'a> {
        let (offset, len) = self.slots[p];
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer,
            offset: 4 * offset as u64,
            size: wgpu::BufferSize::new(4 * len.max(1) as u64),
        })
    }

    /// The tensors laid out in one vector (zeros in the gaps).
    fn pack(&self, tensors: &[Vec<f32>]) -> Vec<f32> {
        let mut all = vec![0.0; self.words];
        for (&(offset, len), t) in self.slots.iter().zip(tensors) {
            all[offset..offset + len].copy_from_slice(t);
        }
        all
    }

    /// The tensors cut out of one vector.
    fn unpack(&self, all: &[f32]) -> Vec<Vec<f32>> {
        self.slots
            .iter()
            .map(|&(offset, len)| all[offset..offset + len].to_vec())
            .collect()
    }
}

fn pack_labels(labels: &[u8]) -> Vec<u32> {
    labels.iter().map(|&l| l as u32).collect()
}

impl GpuExecutor {
    /// Upload the data and the parameters and build every buffer and bind group the run needs.
    /// `batch_size` is the largest training batch that will be asked for.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: Arc<Gpu>,
        kernels: Arc<Kernels>,
        net: Network,
        params: &[Vec<f32>],
        train: &Dataset,
        test: &Dataset,
        norm: Normalization,
        seed: u64,
        batch_size: usize,
    ) -> Result<GpuExecutor> {
        let g = &*gpu;
        let max_binding = g
            .limits
            .max_storage_buffer_binding_size
            .min(g.limits.max_buffer_size);
        let largest_sample = net
            .layers
            .iter()
            .map(|l| l.output.len())
            .chain([net.input.len()])
            .max()
            .unwrap_or(1);
        let bytes_per_sample = 4 * largest_sample as u64;
        let fits = (max_binding / bytes_per_sample) as usize;
        if batch_size > fits {
            bail!(
                "batch size {batch_size} needs {} MiB for one activation, more than this GPU's storage-binding limit of {} MiB; use --batch-size {fits} or less",
                (batch_size as u64 * bytes_per_sample) >> 20,
                max_binding >> 20
            );
        }
        for (set, what) in [(train, "training"), (test, "test")] {
            if set.images.len() as u64 > max_binding {
                bail!("the {what} set ({} MiB of pixels) exceeds this GPU's storage-binding limit of {} MiB", set.images.len() >> 20, max_binding >> 20);
            }
        }
        let eval_batch = EVAL_BATCH.min(fits).min(test.len().max(1));
        let capacity = batch_size.max(eval_batch);

        // Data, uploaded once. Pixels stay u8 (four to a u32 word).
        let train_images = g.storage_init("train images", &train.images);
        let train_labels = g.storage_init(
            "train labels",
            bytemuck::cast_slice(&pack_labels(&train.labels)),
        );
        let test_images = g.storage_init("test images", &test.images);
        let test_labels = g.storage_init(
            "test labels",
            bytemuck::cast_slice(&pack_labels(&test.labels)),
        );
        let order = g.storage("epoch order", 4 * train.len() as u64);
        let step_words = g.constants("step", &[0; 4]);

        // Activations (for the largest batch) and their gradients (for the training batch).
        // Flatten is a reshape: its output aliases its input, its gradient likewise; so does a
        // ReLU or dropout that the layer before applies in its forward epilogue.
        let layers = &net.layers;
        let fast = kernels.fast();
        let mut acts = vec![g.storage("input batch", 4 * (capacity * net.input.len()) as u64)];
        for (i, l) in layers.iter().enumerate() {
            let buffer = match l.layer {
                Layer::Flatten => acts.last().unwrap().clone(),
                _ if plan::relu_forward_fused(layers, i, fast)
                    || plan::dropout_forward_fused(layers, i, fast) =>
                {
                    acts.last().unwrap().clone()
                }
                _ => g.storage(
                    &format!("layer {} output", l.index),
                    4 * (capacity * l.output.len()) as u64,
                ),
            };
            acts.push(buffer);
        }
        let classes = net.classes();
        let mut d_acts: Vec<Option<wgpu::Buffer>> = vec![None; layers.len() + 1];
        d_acts[layers.len()] = Some(g.storage("d_logits", 4 * (capacity * classes) as u64));
        for (i, l) in layers.iter().enumerate().rev().filter(|(i, _)| *i > 0) {
            d_acts[i] = Some(match l.layer {
                // A flatten's gradient is its output's; so is a ReLU's or dropout's whose
                // backward pass the next layer applies.
                Layer::Flatten => d_acts[i + 1].clone().unwrap(),
                _ if plan::relu_mask_fused(layers, i, fast)
                    || plan::dropout_backward_fused(layers, i, fast) =>
                {
                    d_acts[i + 1].clone().unwrap()
                }
                _ => g.storage(
                    &format!("layer {} d_input", l.index),
                    4 * (batch_size * l.input.len()) as u64,
                ),
            });
        }
        // Placeholders for bindings a layer does not use (no bias; no input gradient for layer 0).
        let unused_bias = g.storage("unused bias", 4);
        let unused_d_input = g.storage("unused d_input", 4);
        let unused_d_bias = g.storage("unused d_bias", 4);
        let unused_input = g.storage("unused input", 4);

        check_tensors(&net.params, "parameter", params)?;
        let arena = Arena::new(&net, g.limits.min_storage_buffer_offset_alignment as u64);
        let arena_bytes = 4 * arena.words as u64;
        if arena_bytes > max_binding {
            bail!(
                "the network's parameters take {} MiB, more than this GPU's storage-binding limit of {} MiB",
                arena_bytes >> 20,
                max_binding >> 20
            );
        }
        let param_buffer = g.storage_init("parameters", bytemuck::cast_slice(&arena.pack(params)));
        let grad_buffer = g.storage("gradients", arena_bytes);
        let running_arena =
            Arena::for_buffers(&net, g.limits.min_storage_buffer_offset_alignment as u64);
        let running = g.storage_init(
            "running statistics",
            bytemuck::cast_slice(&running_arena.pack(&net.init_buffers())),
        );
        let velocity = g.storage("velocity / exp_avg", arena_bytes);
        let second = g.storage("exp_avg_sq", arena_bytes);
        let adam_step = g.constants("adam step", &[0; 8]);
        let sgd_constants = g.constants("sgd", &kernels::sgd_dims(arena.words, 0.0, 0.0, 0.0));

        let batch_labels = g.storage("batch labels", 4 * capacity as u64);
        let sample_loss = g.storage("sample loss", 4 * capacity as u64);
        let sample_correct = g.storage("sample correct", 4 * capacity as u64);
        let train_metrics = g.storage_init(
            "train metrics",
            bytemuck::cast_slice(&kernels::metrics_zero()),
        );
        let eval_metrics = g.storage_init(
            "eval metrics",
            bytemuck::cast_slice(&kernels::metrics_zero()),
        );

        // Every op's bind group; the training and evaluation plans refer to them by index.
        let k = &*kernels;
        let mut bind_groups = Vec::new();
        let mut train_plan = Vec::new();
        let mut eval_plan = Vec::new();
        let mut bind = |op: &plan::OpPlan, label: &str, buffers: &[wgpu::BindingResource]| {
            let dims = g.constants(&format!("{label} dims"), &op.dims);
            let mut all = vec![dims.as_entire_binding()];
            all.extend_from_slice(buffers);
            bind_groups.push(k.bind_resources(g, op.file, label, all));
            bind_groups.len() - 1
        };
        fn whole<'a>(buffers: &[&'a wgpu::Buffer]) -> Vec<wgpu::BindingResource<'a>> {
            buffers.iter().map(|b| b.as_entire_binding()).collect()
        }
        let planned = |op: &plan::OpPlan, pass: &[plan::Dispatch], bind_group: usize| {
            pass.iter()
                .map(|&dispatch| {
                    Ok(Planned {
                        dispatch,
                        pipeline: k.pipeline(g, op.file, dispatch.entry, &op.constants)?,
                        bind_group,
                    })
                })
                .collect::<Result<Vec<_>>>()
        };

        let gather_train = plan::gather_batch(IMAGE_PIXELS, false, norm, None);
        let gather_eval = plan::gather_batch(IMAGE_PIXELS, true, norm, None);
        let buffers =
            |images, labels| [&step_words, images, labels, &order, &acts[0], &batch_labels];
        let bg = bind(
            &gather_train,
            "gather train",
            &whole(&buffers(&train_images, &train_labels)),
        );
        train_plan.extend(planned(&gather_train, &gather_train.forward, bg)?);
        let bg = bind(
            &gather_eval,
            "gather test",
            &whole(&buffers(&test_images, &test_labels)),
        );
        eval_plan.extend(planned(&gather_eval, &gather_eval.forward, bg)?);

        // Forward dispatches in layer order; backward ones collected, run in reverse after the loss.
        let mut backward = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let Some(op) = plan::layer(layers, i, seed, fast) else {
                continue; // a flatten: its buffers alias
            };
            // A ReLU whose forward pass the layer before applies reads no input (and its output
            // is that input: a bind group cannot hold the buffer twice).
            let x = if plan::relu_forward_fused(layers, i, fast)
                || plan::dropout_forward_fused(layers, i, fast)
            {
                &unused_input
            } else {
                &acts[i]
            };
            let y = &acts[i + 1];
            let d_y = d_acts[i + 1].as_ref().unwrap();
            // A layer that computes no input gradient binds a placeholder (a fused ReLU's
            // gradient buffer is its output's, which a bind group cannot hold twice).
            let d_x = match &d_acts[i] {
                Some(d_x)
                    if !plan::relu_mask_fused(layers, i, fast)
                        && !plan::dropout_backward_fused(layers, i, fast) =>
                {
                    d_x
                }
                _ => &unused_d_input,
            };
            let label = format!("layer {i} {}", l.layer);
            let bg = match l.weight {
                Some(w) => {
                    let (bias, d_bias) = match l.bias {
                        Some(b) => (
                            arena.binding(&param_buffer, b),
                            arena.binding(&grad_buffer, b),
                        ),
                        None => (
                            unused_bias.as_entire_binding(),
                            unused_d_bias.as_entire_binding(),
                        ),
                    };
                    let weight = arena.binding(&param_buffer, w);
                    let d_weight = arena.binding(&grad_buffer, w);
                    let scratch = (op.scratch > 0)
                        .then(|| g.storage(&format!("{label} scratch"), 4 * op.scratch as u64));
                    let mut buffers = whole(&[&step_words, x]);
                    buffers.extend([weight, bias]);
                    buffers.extend(whole(&[y, d_y, d_x]));
                    buffers.extend([d_weight, d_bias]);
                    buffers.extend(scratch.as_ref().map(|s| s.as_entire_binding()));
                    buffers.extend(l.running.map(|m| running_arena.pair_binding(&running, m)));
                    bind(&op, &label, &buffers)
                }
                None => bind(&op, &label, &whole(&[&step_words, x, y, d_y, d_x])),
            };
            train_plan.extend(planned(&op, &op.forward, bg)?);
            eval_plan.extend(planned(&op, &op.forward, bg)?);
            backward.push(planned(&op, &op.backward, bg)?);
        }

        let loss = plan::loss(classes, net.loss());
        let logits = acts.last().unwrap();
        let d_logits = d_acts.last().unwrap().as_ref().unwrap();
        for (metrics, plan, what) in [
            (&train_metrics, &mut train_plan, "loss train"),
            (&eval_metrics, &mut eval_plan, "loss eval"),
        ] {
            let buffers = [
                &step_words,
                logits,
                &batch_labels,
                d_logits,
                &sample_loss,
                &sample_correct,
                metrics,
            ];
            let bg = bind(&loss, what, &whole(&buffers));
            plan.extend(planned(&loss, &loss.forward, bg)?);
        }
        for back in backward.into_iter().rev() {
            train_plan.extend(back);
        }
        // The optimizer's dispatch, for SGD and for Adam, over every parameter at once;
        // `train_step` puts the one it is asked for at the end of the training plan.
        let sgd = plan::sgd(arena.words, 0.0, 0.0, 0.0);
        let buffers = [&sgd_constants, &param_buffer, &grad_buffer, &velocity];
        bind_groups.push(k.bind(g, "sgd", "sgd", &buffers));
        let sgd_plan = planned(&sgd, &sgd.forward, bind_groups.len() - 1)?;
        let adam = plan::adam(arena.words);
        let dims = g.constants("adam dims", &adam.dims);
        let buffers = [
            &dims,
            &adam_step,
            &param_buffer,
            &grad_buffer,
            &velocity,
            &second,
        ];
        bind_groups.push(k.bind(g, "adam", "adam", &buffers));
        let adam_plan = planned(&adam, &adam.forward, bind_groups.len() - 1)?;
        train_plan.extend(sgd_plan.iter().cloned());
        // The tiled kernels take their grid as it is (no 2-D flattening): it must fit the device.
        let max_groups = g.limits.max_compute_workgroups_per_dimension;
        for (plan, batch) in [(&train_plan, batch_size), (&eval_plan, eval_batch)] {
            for d in plan.iter() {
                if let kernels::Work::Grid(x, y, z) = d.dispatch.size.work(batch) {
                    if x.max(y).max(z) > max_groups {
                        bail!(
                            "batch size {batch} needs a grid of {x}x{y}x{z} workgroups for {}, more than this GPU's {max_groups} per dimension; use a smaller --batch-size",
                            d.dispatch.entry
                        );
                    }
                }
            }
        }
        g.check("allocating buffers and bind groups")?;

        Ok(GpuExecutor {
            gpu,
            kernels,
            net,
            batch_capacity: batch_size,
            eval_batch,
            train_len: train.len(),
            test_len: test.len(),
            step_words,
            order,
            arena,
            params: param_buffer,
            running_arena,
            running,
            velocity,
            second,
            sgd_constants,
            adam_step,
            sgd: None,
            optimizer_plans: [sgd_plan, adam_plan],
            adam_planned: false,
            train_metrics,
            eval_metrics,
            logits: acts.last().unwrap().clone(),
            bind_groups,
            train_plan,
            eval_plan,
            in_flight: VecDeque::new(),
            seed,
            norm,
            profile: None,
        })
    }

    /// A profiled training step. With timestamp queries: every dispatch in its own compute pass
    /// with a timestamp at each end, all in one submission, the timestamps read back once at the
    /// end of the step. Without: every dispatch submitted alone and waited for, timed on the host.
    fn submit_profiled(&mut self, batch: usize, what: &str) -> Result<()> {
        let g = &*self.gpu;
        let profile = self.profile.as_mut().expect("profiling is on");
        g.wait(what)?;
        let mut encoder = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
        for (i, d) in self.train_plan.iter().enumerate() {
            let started = std::time::Instant::now();
            let timestamp_writes =
                profile
                    .timer
                    .as_ref()
                    .map(|t| wgpu::ComputePassTimestampWrites {
                        query_set: &t.queries,
                        beginning_of_pass_write_index: Some(2 * i as u32),
                        end_of_pass_write_index: Some(2 * i as u32 + 1),
                    });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(d.dispatch.entry),
                    timestamp_writes,
                });
                self.kernels.dispatch(
                    &mut pass,
                    &d.pipeline,
                    &self.bind_groups[d.bind_group],
                    d.dispatch.size.work(batch),
                );
            }
            let entry = &mut profile.entries[i];
            entry.calls += 1;
            entry.flops += d.dispatch.flops.at(batch);
            entry.bytes += d.dispatch.bytes.at(batch);
            if profile.timer.is_none() {
                let done = std::mem::replace(
                    &mut encoder,
                    g.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some(what),
                        }),
                );
                g.queue.submit(Some(done.finish()));
                g.wait(what)?;
                entry.seconds += started.elapsed().as_secs_f64();
            }
        }
        if let Some(timer) = &profile.timer {
            let n = 2 * self.train_plan.len() as u32;
            encoder.resolve_query_set(&timer.queries, 0..n, &timer.resolved, 0);
            g.queue.submit(Some(encoder.finish()));
            let bytes = g.read_buffers(&[&timer.resolved], what)?;
            let ticks: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes[0][..8 * n as usize]);
            for (entry, pair) in profile.entries.iter_mut().zip(ticks.chunks_exact(2)) {
                let elapsed = pair[1].saturating_sub(pair[0]) as f64 * timer.period_ns;
                entry.seconds += elapsed * 1e-9;
            }
        } else {
            g.queue.submit(Some(encoder.finish()));
        }
        self.in_flight.clear();
        Ok(())
    }

    /// Write the step uniform, encode `plan` for `batch` images, submit; name errors after `what`.
    fn submit_plan(
        &mut self,
        training: bool,
        batch: usize,
        step: u32,
        start: usize,
        what: &str,
    ) -> Result<()> {
        let g = &*self.gpu;
        g.queue.write_buffer(
            &self.step_words,
            0,
            bytemuck::cast_slice(&kernels::step_words(batch, step, start, training)),
        );
        if training && self.profile.is_some() {
            return self.submit_profiled(batch, what);
        }
        let mut encoder = g
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some(what),
                timestamp_writes: None,
            });
            let plan = if training {
                &self.train_plan
            } else {
                &self.eval_plan
            };
            for d in plan {
                let work = d.dispatch.size.work(batch);
                let bind_group = &self.bind_groups[d.bind_group];
                self.kernels
                    .dispatch(&mut pass, &d.pipeline, bind_group, work);
            }
        }
        let index = g.queue.submit(Some(encoder.finish()));
        g.check(what)?;
        // Keep a bounded number of steps in flight: wait for the oldest when there are too many.
        self.in_flight.push_back(index);
        if self.in_flight.len() > MAX_IN_FLIGHT {
            let oldest = self.in_flight.pop_front().unwrap();
            g.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(oldest),
                    timeout: None,
                })
                .map_err(|e| anyhow::anyhow!("GPU error during {what}: {e}"))?;
            g.check(what)?;
        }
        Ok(())
    }

    /// Read one buffer per parameter tensor (the parameters or their momentum).
    fn read_per_parameter(&self, buffer: &wgpu::Buffer, what: &str) -> Result<Vec<Vec<f32>>> {
        let all = self.gpu.read_f32(&[(buffer, self.arena.words)], what)?;
        Ok(self.arena.unpack(&all[0]))
    }

    /// Read a metrics block and zero it.
    fn take_metrics(&mut self, train: bool, what: &str) -> Result<(Metrics, Option<Diverged>)> {
        let buffer = if train {
            &self.train_metrics
        } else {
            &self.eval_metrics
        };
        let bytes = self.gpu.read_buffers(&[buffer], what)?;
        self.in_flight.clear();
        let w: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[0][..4 * METRICS_WORDS]);
        self.gpu
            .queue
            .write_buffer(buffer, 0, bytemuck::cast_slice(&kernels::metrics_zero()));
        let metrics = Metrics {
            loss_sum: f32::from_bits(w[0]) as f64,
            correct: w[2] as u64,
            count: w[3] as u64,
        };
        let diverged = (w[4] != u32::MAX).then(|| Diverged {
            step: w[4],
            loss: f32::from_bits(w[5]),
        });
        Ok((metrics, diverged))
    }
}

impl Executor for GpuExecutor {
    fn device(&self) -> String {
        let kernels = if self.kernels.fast() {
            "subgroup kernels"
        } else {
            "portable kernels"
        };
        format!("{}, {kernels}", self.gpu.describe())
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "parameter", params)?;
        let queue = &self.gpu.queue;
        queue.write_buffer(
            &self.params,
            0,
            bytemuck::cast_slice(&self.arena.pack(params)),
        );
        let zeros = vec![0u8; 4 * self.arena.words];
        for state in [&self.velocity, &self.second] {
            queue.write_buffer(state, 0, &zeros);
        }
        self.gpu.check("uploading parameters")
    }

    fn parameters(&mut self) -> Result<Vec<Vec<f32>>> {
        self.read_per_parameter(&self.params, "reading the parameters back")
    }

    fn buffers(&mut self) -> Result<Vec<Vec<f32>>> {
        if self.net.buffers.is_empty() {
            return Ok(Vec::new());
        }
        let what = "reading the running statistics back";
        let all = self
            .gpu
            .read_f32(&[(&self.running, self.running_arena.words)], what)?;
        Ok(self.running_arena.unpack(&all[0]))
    }

    fn set_buffers(&mut self, buffers: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.buffers, "buffer", buffers)?;
        let all = self.running_arena.pack(buffers);
        self.gpu
            .queue
            .write_buffer(&self.running, 0, bytemuck::cast_slice(&all));
        self.gpu.check("uploading the running statistics")
    }

    fn momentum(&mut self) -> Result<Vec<Vec<f32>>> {
        self.read_per_parameter(&self.velocity, "reading the momentum back")
    }

    fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "momentum", momentum)?;
        let all = self.arena.pack(momentum);
        self.gpu
            .queue
            .write_buffer(&self.velocity, 0, bytemuck::cast_slice(&all));
        self.gpu.check("uploading the momentum")
    }

    fn second_moment(&mut self) -> Result<Vec<Vec<f32>>> {
        self.read_per_parameter(&self.second, "reading the second moment back")
    }

    fn set_second_moment(&mut self, second: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net.params, "second moment", second)?;
        let all = self.arena.pack(second);
        self.gpu
            .queue
            .write_buffer(&self.second, 0, bytemuck::cast_slice(&all));
        self.gpu.check("uploading the second moment")
    }

    fn test_logits(&mut self) -> Result<Vec<f32>> {
        let classes = self.net.classes();
        let mut logits = Vec::with_capacity(self.test_len * classes);
        let mut start = 0;
        while start < self.test_len {
            let len = self.eval_batch.min(self.test_len - start);
            self.submit_plan(false, len, 0, start, "computing test logits")?;
            let chunk = self
                .gpu
                .read_f32(&[(&self.logits, len * classes)], "reading test logits")?;
            logits.extend_from_slice(&chunk[0]);
            start += len;
        }
        self.in_flight.clear();
        self.gpu.queue.write_buffer(
            &self.eval_metrics,
            0,
            bytemuck::cast_slice(&kernels::metrics_zero()),
        );
        Ok(logits)
    }

    /// The training plan's first dispatch is the gather; augmentation swaps its pipeline for
    /// `gather_batch_augmented` (same bindings), specialised on the ranges and the run's stream.
    fn set_augment(&mut self, augment: Option<crate::ops::Augment>) -> Result<()> {
        let seeded = augment.map(|a| (a, crate::ops::augment_seed(self.seed)));
        let op = plan::gather_batch(IMAGE_PIXELS, false, self.norm, seeded);
        let dispatch = op.forward[0];
        let g = &*self.gpu;
        let pipeline = self
            .kernels
            .pipeline(g, op.file, dispatch.entry, &op.constants)?;
        let first = &mut self.train_plan[0];
        assert!(first.dispatch.entry.starts_with("gather_batch"));
        (first.dispatch, first.pipeline) = (dispatch, pipeline);
        if let Some(profile) = &mut self.profile {
            profile.entries[0].name = dispatch.entry.to_string();
        }
        g.check("building the augmented gather")
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        if order.len() != self.train_len {
            bail!(
                "the epoch order has {} entries, expected {}",
                order.len(),
                self.train_len
            );
        }
        self.gpu
            .queue
            .write_buffer(&self.order, 0, bytemuck::cast_slice(order));
        self.gpu.check("uploading the epoch order")
    }

    fn train_step(&mut self, start: usize, len: usize, step: u32, opt: Optimizer) -> Result<()> {
        if len == 0 || len > self.batch_capacity || start + len > self.train_len {
            bail!("training step of {len} images at {start}: the executor was built for batches of up to {} from {} images", self.batch_capacity, self.train_len);
        }
        let adam = opt.kind != OptimizerKind::Sgd;
        if adam != self.adam_planned {
            let tail = &self.optimizer_plans[adam as usize];
            let base = self.train_plan.len() - tail.len();
            self.train_plan.truncate(base);
            self.train_plan.extend(tail.iter().cloned());
            if let Some(profile) = &mut self.profile {
                for (entry, d) in profile.entries[base..].iter_mut().zip(tail) {
                    entry.name = d.dispatch.entry.to_string();
                }
            }
            self.adam_planned = adam;
        }
        if adam {
            let words = kernels::adam_step_words(&opt.adam_step(step as u64 + 1));
            self.gpu
                .queue
                .write_buffer(&self.adam_step, 0, bytemuck::cast_slice(&words));
        } else if self.sgd != Some(opt) {
            let words = kernels::sgd_dims(self.arena.words, opt.lr, opt.momentum, opt.weight_decay);
            self.gpu
                .queue
                .write_buffer(&self.sgd_constants, 0, bytemuck::cast_slice(&words));
            self.sgd = Some(opt);
        }
        self.submit_plan(true, len, step, start, &format!("training step {step}"))
    }

    fn take_train_metrics(&mut self) -> Result<Metrics> {
        let (metrics, diverged) = self.take_metrics(true, "reading the training metrics")?;
        match diverged {
            Some(d) => Err(d.into()),
            None => Ok(metrics),
        }
    }

    fn evaluate(&mut self, split: Split) -> Result<Metrics> {
        if split != Split::Test {
            bail!("the GPU executor evaluates on the test set only");
        }
        let mut start = 0;
        while start < self.test_len {
            let len = self.eval_batch.min(self.test_len - start);
            self.submit_plan(false, len, 0, start, "evaluating on the test set")?;
            start += len;
        }
        Ok(self.take_metrics(false, "reading the test metrics")?.0)
    }

    /// Time every dispatch of each training step: on the GPU's clock with timestamp queries
    /// where the device has them (no wait between kernels), else each kernel submitted alone and
    /// waited for.
    fn enable_profiling(&mut self) -> Result<()> {
        let g = &*self.gpu;
        let timer = g.timestamps.then(|| {
            let count = 2 * self.train_plan.len() as u32;
            Timer {
                queries: g.device.create_query_set(&wgpu::QuerySetDescriptor {
                    label: Some("profile timestamps"),
                    ty: wgpu::QueryType::Timestamp,
                    count,
                }),
                resolved: g.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("profile timestamps resolved"),
                    size: 8 * count as u64,
                    usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                    mapped_at_creation: false,
                }),
                period_ns: g.queue.get_timestamp_period() as f64,
            }
        });
        let entries = self
            .train_plan
            .iter()
            .map(|d| ProfileEntry {
                name: d.dispatch.entry.to_string(),
                calls: 0,
                seconds: 0.0,
                flops: 0.0,
                bytes: 0.0,
            })
            .collect();
        self.profile = Some(Profile { entries, timer });
        g.check("setting up the profile")
    }

    fn profile(&self) -> Vec<ProfileEntry> {
        self.profile
            .as_ref()
            .map_or_else(Vec::new, |p| p.entries.clone())
    }

    fn profile_method(&self) -> String {
        match self.profile.as_ref().map(|p| p.timer.is_some()) {
            Some(true) => "GPU timestamps around every kernel, one submission a step".into(),
            _ => "no timestamp queries on this device: each kernel submitted alone and waited for (includes the submission and wait, ~50 us on a software adapter)".into(),
        }
    }
}
