//! The GPU executor: the same [`Network`] as the CPU reference, run by the WGSL kernels of
//! `shaders/`.
//!
//! Everything lives on the GPU for the whole run: both data sets (as u8), the activations and
//! their gradients, the parameters, gradients and momentum, allocated once when the executor is
//! made. A training step writes one 16-byte uniform (batch size, step, offset into this epoch's
//! order), then encodes a fixed list of dispatches (gather the batch, forward, loss, backward,
//! SGD, accumulate metrics) and submits it. Loss and accuracy accumulate on the GPU and are read
//! back only when asked for (once per epoch, or every N steps for progress).

pub mod context;
pub mod kernels;
pub mod ops;

use std::collections::VecDeque;
use std::sync::Arc;

use anyhow::{bail, Result};

pub use context::{AdapterChoice, Gpu};
pub use kernels::Kernels;

use crate::data::{Dataset, Normalization, Split, IMAGE_PIXELS};
use crate::executor::{check_tensors, Diverged, Executor, Metrics, Sgd};
use crate::network::{dropout_seed, Network};
use crate::spec::Layer;
use kernels::{Work, METRICS_WORDS};

/// How many test images an evaluation step takes at most (less where the GPU's storage-binding
/// limit says so).
const EVAL_BATCH: usize = 256;
/// Steps in flight before the host waits for the oldest: bounds the queue without stalling it.
const MAX_IN_FLIGHT: usize = 16;

/// How big a dispatch is, given the batch.
#[derive(Debug, Clone, Copy)]
enum Size {
    /// One invocation per element of a per-sample tensor of this many elements.
    PerSample(usize),
    Threads(usize),
    Groups(usize),
}

/// One dispatch of a plan: which entry point, with which bind group, how big.
struct Dispatch {
    entry: &'static str,
    bind_group: usize,
    size: Size,
}

pub struct GpuExecutor {
    gpu: Arc<Gpu>,
    kernels: Arc<Kernels>,
    net: Network,
    batch_capacity: usize,
    eval_batch: usize,
    train_len: usize,
    test_len: usize,
    step_uniform: wgpu::Buffer,
    order: wgpu::Buffer,
    params: Vec<wgpu::Buffer>,
    velocity: Vec<wgpu::Buffer>,
    sgd_uniforms: Vec<wgpu::Buffer>,
    sgd: Option<Sgd>,
    train_metrics: wgpu::Buffer,
    eval_metrics: wgpu::Buffer,
    logits: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>,
    train_plan: Vec<Dispatch>,
    eval_plan: Vec<Dispatch>,
    in_flight: VecDeque<wgpu::SubmissionIndex>,
    /// When set, every dispatch of a training step runs alone and is timed (see [`GpuExecutor::profile`]).
    profile: Option<Vec<(&'static str, u32, f64)>>,
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
        let step_uniform = g.uniform("step", &[0; 4]);

        // Activations (for the largest batch) and their gradients (for the training batch).
        // Flatten is a reshape: its output aliases its input, its gradient likewise.
        let layers = &net.layers;
        let mut acts = vec![g.storage("input batch", 4 * (capacity * net.input.len()) as u64)];
        for l in layers {
            let buffer = match l.layer {
                Layer::Flatten => acts.last().unwrap().clone(),
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
                Layer::Flatten => d_acts[i + 1].clone().unwrap(),
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

        let param_buffers: Vec<wgpu::Buffer> = net
            .params
            .iter()
            .zip(params)
            .map(|(info, values)| g.storage_init(&info.name, bytemuck::cast_slice(values)))
            .collect();
        let grad_buffers: Vec<wgpu::Buffer> = net
            .params
            .iter()
            .map(|info| g.storage(&format!("grad {}", info.name), 4 * info.len() as u64))
            .collect();
        let velocity: Vec<wgpu::Buffer> = net
            .params
            .iter()
            .map(|info| g.storage(&format!("velocity {}", info.name), 4 * info.len() as u64))
            .collect();
        let sgd_uniforms: Vec<wgpu::Buffer> = net
            .params
            .iter()
            .map(|info| {
                g.uniform(
                    &format!("sgd {}", info.name),
                    &kernels::sgd_dims(info.len(), 0.0, 0.0),
                )
            })
            .collect();

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

        let k = &*kernels;
        let mut bind_groups = Vec::new();
        let mut add = |bg: wgpu::BindGroup| {
            bind_groups.push(bg);
            bind_groups.len() - 1
        };
        let mut train_plan = Vec::new();
        let mut eval_plan = Vec::new();

        let train_dims = g.uniform(
            "batch dims train",
            &kernels::batch_dims(IMAGE_PIXELS, false, norm.mean, norm.std),
        );
        let eval_dims = g.uniform(
            "batch dims eval",
            &kernels::batch_dims(IMAGE_PIXELS, true, norm.mean, norm.std),
        );
        let gather_train = add(k.bind(
            g,
            "batch",
            "gather train",
            &[
                &train_dims,
                &step_uniform,
                &train_images,
                &train_labels,
                &order,
                &acts[0],
                &batch_labels,
            ],
        ));
        let gather_eval = add(k.bind(
            g,
            "batch",
            "gather test",
            &[
                &eval_dims,
                &step_uniform,
                &test_images,
                &test_labels,
                &order,
                &acts[0],
                &batch_labels,
            ],
        ));
        train_plan.push(Dispatch {
            entry: "gather_batch",
            bind_group: gather_train,
            size: Size::PerSample(IMAGE_PIXELS),
        });
        eval_plan.push(Dispatch {
            entry: "gather_batch",
            bind_group: gather_eval,
            size: Size::PerSample(IMAGE_PIXELS),
        });

        // One bind group per layer; forward dispatches in order, backward ones collected in
        // reverse after the loss.
        let mut backward: Vec<Vec<Dispatch>> = Vec::new();
        for (i, l) in layers.iter().enumerate() {
            let (x, y) = (&acts[i], &acts[i + 1]);
            let d_y = d_acts[i + 1].as_ref().unwrap();
            let d_x = d_acts[i].as_ref().unwrap_or(&unused_d_input);
            let first = i == 0;
            let mut forward = Vec::new();
            let mut back = Vec::new();
            let with_params = |file: &'static str, dims: Vec<u32>| -> wgpu::BindGroup {
                let dims = g.uniform(&format!("layer {i} dims"), &dims);
                let w = l.weight.unwrap();
                let (bias, d_bias) = match l.bias {
                    Some(b) => (&param_buffers[b], &grad_buffers[b]),
                    None => (&unused_bias, &unused_d_bias),
                };
                k.bind(
                    g,
                    file,
                    &format!("layer {i} {}", l.layer),
                    &[
                        &dims,
                        &step_uniform,
                        x,
                        &param_buffers[w],
                        bias,
                        y,
                        d_y,
                        d_x,
                        &grad_buffers[w],
                        d_bias,
                    ],
                )
            };
            let without_params = |file: &'static str, dims: Vec<u32>| -> wgpu::BindGroup {
                let dims = g.uniform(&format!("layer {i} dims"), &dims);
                k.bind(
                    g,
                    file,
                    &format!("layer {i} {}", l.layer),
                    &[&dims, &step_uniform, x, y, d_y, d_x],
                )
            };
            match l.layer {
                Layer::Conv2d { bias, .. } => {
                    let s = l.conv_shape(1);
                    let bg = add(with_params("conv2d", kernels::conv_dims(&s, bias)));
                    forward.push(Dispatch {
                        entry: "conv2d_forward",
                        bind_group: bg,
                        size: Size::PerSample(kernels::conv_forward_threads_per_sample(&s)),
                    });
                    back.push(Dispatch {
                        entry: "conv2d_backward_weight",
                        bind_group: bg,
                        size: Size::Groups(s.weight_len()),
                    });
                    if bias {
                        back.push(Dispatch {
                            entry: "conv2d_backward_bias",
                            bind_group: bg,
                            size: Size::Groups(s.out_channels),
                        });
                    }
                    if !first {
                        back.push(Dispatch {
                            entry: "conv2d_backward_input",
                            bind_group: bg,
                            size: Size::PerSample(l.input.len()),
                        });
                    }
                }
                Layer::Dense { bias, .. } => {
                    let s = l.dense_shape(1);
                    let bg = add(with_params("dense", kernels::dense_dims(&s, bias)));
                    forward.push(Dispatch {
                        entry: "dense_forward",
                        bind_group: bg,
                        size: Size::PerSample(l.output.len()),
                    });
                    back.push(Dispatch {
                        entry: "dense_backward_weight",
                        bind_group: bg,
                        size: Size::Threads(s.in_features * s.out_features),
                    });
                    if bias {
                        back.push(Dispatch {
                            entry: "dense_backward_bias",
                            bind_group: bg,
                            size: Size::Threads(s.out_features),
                        });
                    }
                    if !first {
                        back.push(Dispatch {
                            entry: "dense_backward_input",
                            bind_group: bg,
                            size: Size::PerSample(l.input.len()),
                        });
                    }
                }
                Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } => {
                    let bg = add(without_params("pool", kernels::pool_dims(&l.pool_shape(1))));
                    let (f, b) = if matches!(l.layer, Layer::MaxPool2d { .. }) {
                        ("max_pool2d_forward", "max_pool2d_backward")
                    } else {
                        ("avg_pool2d_forward", "avg_pool2d_backward")
                    };
                    forward.push(Dispatch {
                        entry: f,
                        bind_group: bg,
                        size: Size::PerSample(l.output.len()),
                    });
                    if !first {
                        back.push(Dispatch {
                            entry: b,
                            bind_group: bg,
                            size: Size::PerSample(l.input.len()),
                        });
                    }
                }
                Layer::Relu | Layer::Tanh | Layer::Sigmoid => {
                    let bg = add(without_params(
                        "activation",
                        kernels::element_dims(l.output.len()),
                    ));
                    let (f, b) = match l.layer {
                        Layer::Relu => ("relu_forward", "relu_backward"),
                        Layer::Tanh => ("tanh_forward", "tanh_backward"),
                        _ => ("sigmoid_forward", "sigmoid_backward"),
                    };
                    forward.push(Dispatch {
                        entry: f,
                        bind_group: bg,
                        size: Size::PerSample(l.output.len()),
                    });
                    if !first {
                        back.push(Dispatch {
                            entry: b,
                            bind_group: bg,
                            size: Size::PerSample(l.input.len()),
                        });
                    }
                }
                Layer::Dropout { p } => {
                    let bg = add(without_params(
                        "dropout",
                        kernels::dropout_dims(l.output.len(), p, dropout_seed(seed, l.index)),
                    ));
                    forward.push(Dispatch {
                        entry: "dropout_forward",
                        bind_group: bg,
                        size: Size::PerSample(l.output.len()),
                    });
                    if !first {
                        back.push(Dispatch {
                            entry: "dropout_backward",
                            bind_group: bg,
                            size: Size::PerSample(l.input.len()),
                        });
                    }
                }
                Layer::Flatten => {}
            }
            for d in &forward {
                train_plan.push(Dispatch {
                    entry: d.entry,
                    bind_group: d.bind_group,
                    size: d.size,
                });
            }
            eval_plan.extend(forward);
            backward.push(back);
        }

        let loss_dims = g.uniform("loss dims", &kernels::loss_dims(classes, net.loss()));
        let logits = acts.last().unwrap();
        let d_logits = d_acts.last().unwrap().as_ref().unwrap();
        let loss_train = add(k.bind(
            g,
            "loss",
            "loss train",
            &[
                &loss_dims,
                &step_uniform,
                logits,
                &batch_labels,
                d_logits,
                &sample_loss,
                &sample_correct,
                &train_metrics,
            ],
        ));
        let loss_eval = add(k.bind(
            g,
            "loss",
            "loss eval",
            &[
                &loss_dims,
                &step_uniform,
                logits,
                &batch_labels,
                d_logits,
                &sample_loss,
                &sample_correct,
                &eval_metrics,
            ],
        ));
        train_plan.push(Dispatch {
            entry: "loss_forward_backward",
            bind_group: loss_train,
            size: Size::PerSample(1),
        });
        train_plan.push(Dispatch {
            entry: "accumulate_metrics",
            bind_group: loss_train,
            size: Size::Groups(1),
        });
        eval_plan.push(Dispatch {
            entry: "loss_forward_backward",
            bind_group: loss_eval,
            size: Size::PerSample(1),
        });
        eval_plan.push(Dispatch {
            entry: "accumulate_metrics",
            bind_group: loss_eval,
            size: Size::Groups(1),
        });

        for back in backward.into_iter().rev() {
            train_plan.extend(back);
        }
        for (p, info) in net.params.iter().enumerate() {
            let bg = add(k.bind(
                g,
                "sgd",
                &format!("sgd {}", info.name),
                &[
                    &sgd_uniforms[p],
                    &param_buffers[p],
                    &grad_buffers[p],
                    &velocity[p],
                ],
            ));
            train_plan.push(Dispatch {
                entry: "sgd_update",
                bind_group: bg,
                size: Size::Threads(info.len()),
            });
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
            step_uniform,
            order,
            params: param_buffers,
            velocity,
            sgd_uniforms,
            sgd: None,
            train_metrics,
            eval_metrics,
            logits: acts.last().unwrap().clone(),
            bind_groups,
            train_plan,
            eval_plan,
            in_flight: VecDeque::new(),
            profile: None,
        })
    }

    /// From now on, run each dispatch of a training step as its own submission and wait for it,
    /// accumulating wall time per entry point: slow, for finding the expensive kernels only.
    pub fn enable_profiling(&mut self) {
        self.profile = Some(self.train_plan.iter().map(|d| (d.entry, 0, 0.0)).collect());
    }

    /// Per dispatch of the training plan, in order: entry point, times run, total seconds.
    /// Each includes one submission and wait (~50 us on a software adapter).
    pub fn profile(&self) -> Option<&[(&'static str, u32, f64)]> {
        self.profile.as_deref()
    }

    fn work(d: &Dispatch, batch: usize) -> Work {
        match d.size {
            Size::PerSample(n) => Work::Threads((batch * n) as u32),
            Size::Threads(n) => Work::Threads(n as u32),
            Size::Groups(n) => Work::Groups(n as u32),
        }
    }

    fn submit_profiled(&mut self, batch: usize, what: &str) -> Result<()> {
        let g = &*self.gpu;
        g.wait(what)?;
        for (i, d) in self.train_plan.iter().enumerate() {
            let started = std::time::Instant::now();
            let mut encoder = g
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some(what) });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(what),
                    timestamp_writes: None,
                });
                self.kernels.dispatch(
                    &mut pass,
                    d.entry,
                    &self.bind_groups[d.bind_group],
                    Self::work(d, batch),
                );
            }
            g.queue.submit(Some(encoder.finish()));
            g.wait(what)?;
            let entry = &mut self.profile.as_mut().unwrap()[i];
            entry.1 += 1;
            entry.2 += started.elapsed().as_secs_f64();
        }
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
            &self.step_uniform,
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
                let work = Self::work(d, batch);
                self.kernels
                    .dispatch(&mut pass, d.entry, &self.bind_groups[d.bind_group], work);
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
        self.gpu.describe()
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net, "parameter", params)?;
        for ((info, p), (buffer, velocity)) in self
            .net
            .params
            .iter()
            .zip(params)
            .zip(self.params.iter().zip(&self.velocity))
        {
            self.gpu
                .queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(p));
            self.gpu
                .queue
                .write_buffer(velocity, 0, &vec![0u8; 4 * info.len()]);
        }
        self.gpu.check("uploading parameters")
    }

    fn parameters(&mut self) -> Result<Vec<Vec<f32>>> {
        let buffers: Vec<(&wgpu::Buffer, usize)> = self
            .params
            .iter()
            .zip(&self.net.params)
            .map(|(b, i)| (b, i.len()))
            .collect();
        self.gpu.read_f32(&buffers, "reading the parameters back")
    }

    fn momentum(&mut self) -> Result<Vec<Vec<f32>>> {
        let buffers: Vec<(&wgpu::Buffer, usize)> = self
            .velocity
            .iter()
            .zip(&self.net.params)
            .map(|(b, i)| (b, i.len()))
            .collect();
        self.gpu.read_f32(&buffers, "reading the momentum back")
    }

    fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()> {
        check_tensors(&self.net, "momentum", momentum)?;
        for (m, buffer) in momentum.iter().zip(&self.velocity) {
            self.gpu
                .queue
                .write_buffer(buffer, 0, bytemuck::cast_slice(m));
        }
        self.gpu.check("uploading the momentum")
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

    fn train_step(&mut self, start: usize, len: usize, step: u32, sgd: Sgd) -> Result<()> {
        if len == 0 || len > self.batch_capacity || start + len > self.train_len {
            bail!("training step of {len} images at {start}: the executor was built for batches of up to {} from {} images", self.batch_capacity, self.train_len);
        }
        if self.sgd != Some(sgd) {
            for (u, info) in self.sgd_uniforms.iter().zip(&self.net.params) {
                let words = kernels::sgd_dims(info.len(), sgd.lr, sgd.momentum);
                self.gpu
                    .queue
                    .write_buffer(u, 0, bytemuck::cast_slice(&words));
            }
            self.sgd = Some(sgd);
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
}
