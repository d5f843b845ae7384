//! The WGSL kernels: one file per op under `shaders/`, compiled into the binary with
//! `include_str!`, every pipeline built once at start and looked up by entry-point name.
//!
//! Each file has one explicit bind-group layout shared by all its entry points (binding 0 is the
//! op's dimensions, binding 1 the per-step words where the op uses it), so a layer needs one
//! bind group per file whatever pass runs. The `*_dims` functions here are the only place that
//! turns shapes into those words, for the executor and the op tests alike.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Result};

use crate::exec::gpu::context::Gpu;
use crate::ops::{Conv2dShape, DenseShape, Pool2dShape};

/// How a binding is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Dimensions or per-step words: a small read-only storage buffer ([`Gpu::constants`] says
    /// why not a uniform buffer).
    Constants,
    Read,
    ReadWrite,
}
use Access::*;

/// One WGSL file: its source, its bindings in order, and its entry points.
pub struct ShaderFile {
    pub name: &'static str,
    pub source: &'static str,
    pub bindings: &'static [Access],
    pub entry_points: &'static [&'static str],
    /// Needs subgroup operations (with subgroups of at least 8 invocations): compiled only where
    /// the device has them; the op's `*_portable` file runs elsewhere.
    pub subgroups: bool,
}

/// conv2d and dense: dims, step, input, weight, bias, output, d_output, d_input, d_weight, d_bias.
const LAYER_WITH_PARAMS: &[Access] = &[
    Constants, Constants, Read, Read, Read, ReadWrite, Read, ReadWrite, ReadWrite, ReadWrite,
];
/// pool, activation, dropout: dims, step, input, output, d_output, d_input.
const LAYER_WITHOUT_PARAMS: &[Access] = &[Constants, Constants, Read, ReadWrite, Read, ReadWrite];
/// The fast conv2d: [`LAYER_WITH_PARAMS`] and a scratch buffer for the split-K partial sums of the
/// weight gradient.
const CONV_FAST: &[Access] = &[
    Constants, Constants, Read, Read, Read, ReadWrite, Read, ReadWrite, ReadWrite, ReadWrite,
    ReadWrite,
];

/// Batch normalization: [`LAYER_WITH_PARAMS`], the pass's statistics (scratch) and the running
/// statistics.
const BATCH_NORM: &[Access] = &[
    Constants, Constants, Read, Read, Read, ReadWrite, Read, ReadWrite, ReadWrite, ReadWrite,
    ReadWrite, ReadWrite,
];

pub const SHADERS: &[ShaderFile] = &[
    ShaderFile {
        name: "batch",
        source: concat!(
            include_str!("../../../shaders/dropout_mask.wgsl"),
            include_str!("../../../shaders/batch.wgsl")
        ),
        bindings: &[Constants, Constants, Read, Read, Read, ReadWrite, ReadWrite],
        entry_points: &["gather_batch", "gather_batch_augmented"],
        subgroups: false,
    },
    ShaderFile {
        name: "conv2d",
        source: concat!(
            include_str!("../../../shaders/dropout_mask.wgsl"),
            include_str!("../../../shaders/conv2d.wgsl")
        ),
        bindings: CONV_FAST,
        entry_points: &[
            "conv2d_forward",
            "conv2d_forward_narrow",
            "conv2d_backward_input",
            "conv2d_backward_weight",
            "conv2d_backward_weight_by_channel",
            "conv2d_backward_weight_reduce",
        ],
        subgroups: true,
    },
    ShaderFile {
        name: "conv2d_portable",
        source: include_str!("../../../shaders/conv2d_portable.wgsl"),
        bindings: LAYER_WITH_PARAMS,
        entry_points: &[
            "conv2d_forward",
            "conv2d_backward_input",
            "conv2d_backward_weight",
            "conv2d_backward_bias",
        ],
        subgroups: false,
    },
    ShaderFile {
        name: "pool",
        source: concat!(
            include_str!("../../../shaders/dropout_mask.wgsl"),
            include_str!("../../../shaders/pool.wgsl")
        ),
        bindings: LAYER_WITHOUT_PARAMS,
        entry_points: &[
            "max_pool2d_forward",
            "max_pool2d_backward",
            "max_pool2d_backward_disjoint",
            "avg_pool2d_forward",
            "avg_pool2d_backward",
        ],
        subgroups: false,
    },
    ShaderFile {
        name: "dense",
        source: concat!(
            include_str!("../../../shaders/dropout_mask.wgsl"),
            include_str!("../../../shaders/dense.wgsl")
        ),
        bindings: LAYER_WITH_PARAMS,
        entry_points: &[
            "dense_forward",
            "dense_forward_by_sample",
            "dense_backward_input",
            "dense_backward_weight",
        ],
        subgroups: true,
    },
    ShaderFile {
        name: "dense_portable",
        source: include_str!("../../../shaders/dense_portable.wgsl"),
        bindings: LAYER_WITH_PARAMS,
        entry_points: &[
            "dense_forward",
            "dense_backward_input",
            "dense_backward_weight",
            "dense_backward_bias",
        ],
        subgroups: false,
    },
    ShaderFile {
        name: "activation",
        source: include_str!("../../../shaders/activation.wgsl"),
        bindings: LAYER_WITHOUT_PARAMS,
        entry_points: &[
            "relu_forward",
            "relu_backward",
            "tanh_forward",
            "tanh_backward",
            "sigmoid_forward",
            "sigmoid_backward",
        ],
        subgroups: false,
    },
    ShaderFile {
        name: "dropout",
        source: concat!(
            include_str!("../../../shaders/dropout_mask.wgsl"),
            include_str!("../../../shaders/dropout.wgsl")
        ),
        bindings: LAYER_WITHOUT_PARAMS,
        entry_points: &["dropout_forward", "dropout_backward"],
        subgroups: false,
    },
    ShaderFile {
        name: "batchnorm",
        source: include_str!("../../../shaders/batchnorm.wgsl"),
        bindings: BATCH_NORM,
        entry_points: &[
            "batchnorm_stats",
            "batchnorm_forward",
            "batchnorm_backward_reduce",
            "batchnorm_backward_input",
        ],
        subgroups: false,
    },
    ShaderFile {
        name: "loss",
        source: include_str!("../../../shaders/loss.wgsl"),
        bindings: &[
            Constants, Constants, Read, Read, ReadWrite, ReadWrite, ReadWrite, ReadWrite,
        ],
        entry_points: &["loss_forward_backward", "accumulate_metrics"],
        subgroups: false,
    },
    ShaderFile {
        name: "adam",
        source: include_str!("../../../shaders/adam.wgsl"),
        bindings: &[Constants, Constants, ReadWrite, Read, ReadWrite, ReadWrite],
        entry_points: &["adam_update"],
        subgroups: false,
    },
    ShaderFile {
        name: "sgd",
        source: include_str!("../../../shaders/sgd.wgsl"),
        bindings: &[Constants, ReadWrite, Read, ReadWrite],
        entry_points: &["sgd_update"],
        subgroups: false,
    },
];

/// Threads per workgroup of the elementwise kernels (`@workgroup_size(64)` in every file).
pub const WORKGROUP: u32 = 64;

/// How many threads or workgroups a dispatch needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// One invocation per element: `ceil(n / 64)` workgroups.
    Threads(u32),
    /// One workgroup per item (the reductions).
    Groups(u32),
    /// Exactly this grid of workgroups (the tiled kernels, which read their tile from
    /// `workgroup_id`).
    Grid(u32, u32, u32),
}

/// A pipeline's override constants: `(name, value)` pairs, the same for every entry point of an
/// op (its shape, where the shader specialises on it).
pub type Constants = [(&'static str, f64)];

/// Every shader module and bind-group layout, built once at start (so a WGSL error shows at once),
/// and the pipelines, built on first use for each (entry point, override constants) and kept.
pub struct Kernels {
    modules: HashMap<&'static str, wgpu::ShaderModule>,
    layouts: HashMap<&'static str, (wgpu::BindGroupLayout, wgpu::PipelineLayout)>,
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    max_groups_per_dimension: u32,
}

impl Kernels {
    pub fn new(gpu: &Gpu) -> Result<Kernels> {
        let mut modules = HashMap::new();
        let mut layouts = HashMap::new();
        for file in SHADERS.iter().filter(|f| gpu.subgroups || !f.subgroups) {
            let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
            let module = gpu
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(file.name),
                    source: wgpu::ShaderSource::Wgsl(file.source.into()),
                });
            let entries: Vec<wgpu::BindGroupLayoutEntry> = file
                .bindings
                .iter()
                .enumerate()
                .map(|(i, access)| wgpu::BindGroupLayoutEntry {
                    binding: i as u32,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: match access {
                            Constants | Read => {
                                wgpu::BufferBindingType::Storage { read_only: true }
                            }
                            ReadWrite => wgpu::BufferBindingType::Storage { read_only: false },
                        },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                })
                .collect();
            let layout = gpu
                .device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(file.name),
                    entries: &entries,
                });
            let pipeline_layout =
                gpu.device
                    .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                        label: Some(file.name),
                        bind_group_layouts: &[Some(&layout)],
                        immediate_size: 0,
                    });
            if let Some(e) = pollster::block_on(scope.pop()) {
                return Err(anyhow!("compiling shaders/{}.wgsl: {e}", file.name));
            }
            modules.insert(file.name, module);
            layouts.insert(file.name, (layout, pipeline_layout));
        }
        gpu.check("compiling the shaders")?;
        Ok(Kernels {
            modules,
            layouts,
            pipelines: Mutex::default(),
            max_groups_per_dimension: gpu.limits.max_compute_workgroups_per_dimension,
        })
    }

    /// Whether the fast convolution and dense kernels (which need subgroups) run on this device;
    /// else their `*_portable` files do.
    pub fn fast(&self) -> bool {
        self.modules.contains_key("conv2d")
    }

    /// The pipeline of `entry` in `shaders/<file>.wgsl` specialised with `constants`, built the
    /// first time it is asked for.
    pub fn pipeline(
        &self,
        gpu: &Gpu,
        file: &str,
        entry: &str,
        constants: &Constants,
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let key = format!("{file}/{entry}{constants:?}");
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        anyhow::ensure!(
            self.modules.contains_key(file),
            "shaders/{file}.wgsl is not compiled on this device"
        );
        let values: Vec<(&str, f64)> = constants.to_vec();
        let scope = gpu.device.push_error_scope(wgpu::ErrorFilter::Validation);
        let pipeline = gpu
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(entry),
                layout: Some(&self.layouts[file].1),
                module: &self.modules[file],
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &values,
                    ..Default::default()
                },
                cache: None,
            });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(anyhow!(
                "building the pipeline {entry} of shaders/{file}.wgsl with {constants:?}: {e}"
            ));
        }
        let pipeline = Arc::new(pipeline);
        self.pipelines.lock().unwrap().insert(key, pipeline.clone());
        Ok(pipeline)
    }

    /// Use at most `n` workgroups per grid dimension (never more than the device allows). Tests
    /// set it low to run every kernel on 2-D grids with small shapes.
    pub fn set_max_groups_per_dimension(&mut self, n: u32) {
        self.max_groups_per_dimension = n.clamp(1, self.max_groups_per_dimension);
    }

    /// A bind group for `file`, with `buffers` in binding order.
    pub fn bind(
        &self,
        gpu: &Gpu,
        file: &str,
        label: &str,
        buffers: &[&wgpu::Buffer],
    ) -> wgpu::BindGroup {
        let resources = buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.bind_resources(gpu, file, label, resources)
    }

    /// A bind group for `file`, with `resources` (whole buffers or ranges of one) in binding order.
    pub fn bind_resources(
        &self,
        gpu: &Gpu,
        file: &str,
        label: &str,
        resources: Vec<wgpu::BindingResource>,
    ) -> wgpu::BindGroup {
        let layout = &self.layouts[file].0;
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .into_iter()
            .enumerate()
            .map(|(i, resource)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource,
            })
            .collect();
        gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some(label),
            layout,
            entries: &entries,
        })
    }

    /// The grid for `work`: at most `max_compute_workgroups_per_dimension` (65535) workgroups in x,
    /// the rest in y; the kernels flatten (x, y) back and skip the overshoot.
    pub fn grid(&self, work: Work) -> (u32, u32) {
        let groups = match work {
            Work::Threads(n) => n.div_ceil(WORKGROUP),
            Work::Groups(n) => n,
            Work::Grid(x, y, _) => return (x, y),
        }
        .max(1);
        let x = groups.min(self.max_groups_per_dimension);
        (x, groups.div_ceil(x))
    }

    pub fn dispatch(
        &self,
        pass: &mut wgpu::ComputePass<'_>,
        pipeline: &wgpu::ComputePipeline,
        bind_group: &wgpu::BindGroup,
        work: Work,
    ) {
        let (x, y) = self.grid(work);
        let z = match work {
            Work::Grid(_, _, z) => z,
            _ => 1,
        };
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, bind_group, &[]);
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Output channels one `conv2d_forward` invocation computes (`OUT_PER_THREAD` in conv2d.wgsl).
pub const CONV_OUT_PER_THREAD: usize = 4;

/// Invocations `conv2d_forward` needs per sample.
pub fn conv_forward_threads_per_sample(s: &Conv2dShape) -> usize {
    s.out_channels.div_ceil(CONV_OUT_PER_THREAD) * s.out_height() * s.out_width()
}

/// The per-step words every layer kernel reads: `Step { batch, step, start, training }`.
pub fn step_words(batch: usize, step: u32, start: usize, training: bool) -> [u32; 4] {
    [batch as u32, step, start as u32, training as u32]
}

pub fn conv_dims(s: &Conv2dShape, has_bias: bool) -> Vec<u32> {
    vec![
        s.in_channels as u32,
        s.in_height as u32,
        s.in_width as u32,
        s.out_channels as u32,
        s.out_height() as u32,
        s.out_width() as u32,
        s.kernel_size as u32,
        s.stride as u32,
        s.padding as u32,
        has_bias as u32,
        0,
        0,
    ]
}

pub fn pool_dims(s: &Pool2dShape) -> Vec<u32> {
    vec![
        s.channels as u32,
        s.in_height as u32,
        s.in_width as u32,
        s.out_height() as u32,
        s.out_width() as u32,
        s.window as u32,
        s.stride as u32,
        0,
    ]
}

pub fn dense_dims(s: &DenseShape, has_bias: bool) -> Vec<u32> {
    vec![
        s.in_features as u32,
        s.out_features as u32,
        has_bias as u32,
        0,
    ]
}

pub fn element_dims(per_sample: usize) -> Vec<u32> {
    vec![per_sample as u32, 0, 0, 0]
}

pub fn norm_dims(s: &crate::ops::BatchNormShape) -> Vec<u32> {
    vec![s.channels as u32, s.spatial as u32, 0, 0]
}

pub fn dropout_dims(per_sample: usize, p: f32, seed: u32) -> Vec<u32> {
    vec![per_sample as u32, p.to_bits(), seed, 0]
}

/// `kind`: 0 softmax cross-entropy, 1 sigmoid BCE, 2 sigmoid MSE.
pub fn loss_dims(classes: usize, loss: crate::spec::Loss) -> Vec<u32> {
    let kind = match loss {
        crate::spec::Loss::SoftmaxCrossEntropy => 0,
        crate::spec::Loss::SigmoidBinaryCrossEntropy => 1,
        crate::spec::Loss::SigmoidMeanSquaredError => 2,
    };
    vec![classes as u32, kind, 0, 0]
}

pub fn sgd_dims(len: usize, lr: f32, momentum: f32, weight_decay: f32) -> Vec<u32> {
    vec![
        len as u32,
        lr.to_bits(),
        momentum.to_bits(),
        weight_decay.to_bits(),
    ]
}

pub fn adam_dims(len: usize) -> Vec<u32> {
    vec![len as u32, 0, 0, 0]
}

/// The shared per-step words of `adam.wgsl` (its `AdamStep`).
pub fn adam_step_words(s: &crate::ops::AdamStep) -> Vec<u32> {
    [
        s.decay,
        s.l2,
        s.one_minus_beta1,
        s.beta2,
        s.one_minus_beta2,
        s.eps,
        s.step_size,
        s.bias_correction2_sqrt,
    ]
    .iter()
    .map(|v| v.to_bits())
    .collect()
}

pub fn batch_dims(pixels: usize, sequential: bool, mean: f32, std: f32) -> Vec<u32> {
    vec![
        pixels as u32,
        sequential as u32,
        mean.to_bits(),
        std.to_bits(),
    ]
}

/// The metrics block of `loss.wgsl`, zeroed (first_bad_step = none).
pub const METRICS_WORDS: usize = 8;
pub fn metrics_zero() -> [u32; METRICS_WORDS] {
    [0, 0, 0, 0, u32::MAX, 0, 0, 0]
}
