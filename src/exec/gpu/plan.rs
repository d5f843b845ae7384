//! Which kernels each op runs, described once: its shader file, the dims uniform its bind group
//! carries, and the entry points of its forward and backward passes with how many threads or
//! workgroups each needs. The executor builds its training and evaluation plans from these
//! (`GpuExecutor::new`), and the op tests run exactly the same dispatches ([`super::ops`]).
//!
//! Adding an op to the GPU is one shader in `shaders/`, its entry in [`super::kernels::SHADERS`],
//! and one function here (plus its arm in [`layer`]).

use super::kernels::{self, Work};
use crate::data::Normalization;
use crate::network::{dropout_seed, ResolvedLayer};
use crate::ops::{Augment, BatchNormShape, Conv2dShape, DenseShape, Pool2dShape};
use crate::spec::{Layer, Loss};

/// How big a dispatch is, given the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// One invocation per element of a per-sample tensor of this many elements.
    PerSample(usize),
    /// This many invocations, whatever the batch.
    Threads(usize),
    /// This many workgroups (the reductions), whatever the batch.
    Groups(usize),
    /// A grid of workgroups (the tiled kernels), each dimension growing with the batch or not.
    Grid([Extent; 3]),
}

/// One dimension of a [`Size::Grid`]: `ceil((per_sample * batch + fixed) / per_group)` workgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub per_sample: usize,
    pub fixed: usize,
    pub per_group: usize,
}

impl Extent {
    /// `n` workgroups whatever the batch.
    pub fn groups(n: usize) -> Extent {
        Extent {
            per_sample: 0,
            fixed: n,
            per_group: 1,
        }
    }

    /// Enough workgroups of `per_group` items for `per_sample` items a sample.
    pub fn per_sample(per_sample: usize, per_group: usize) -> Extent {
        Extent {
            per_sample,
            fixed: 0,
            per_group,
        }
    }

    pub fn at(self, batch: usize) -> usize {
        (self.per_sample * batch + self.fixed)
            .div_ceil(self.per_group)
            .max(1)
    }
}

impl Size {
    pub fn work(self, batch: usize) -> Work {
        match self {
            Size::PerSample(n) => Work::Threads((batch * n) as u32),
            Size::Threads(n) => Work::Threads(n as u32),
            Size::Groups(n) => Work::Groups(n as u32),
            Size::Grid(g) => Work::Grid(
                g[0].at(batch) as u32,
                g[1].at(batch) as u32,
                g[2].at(batch) as u32,
            ),
        }
    }
}

/// An amount that grows with the batch: `per_sample * batch + fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Amount {
    pub per_sample: f64,
    pub fixed: f64,
}

impl Amount {
    pub fn at(self, batch: usize) -> f64 {
        self.per_sample * batch as f64 + self.fixed
    }
}

fn per_sample(n: usize) -> Amount {
    Amount {
        per_sample: n as f64,
        fixed: 0.0,
    }
}

fn fixed(n: usize) -> Amount {
    Amount {
        per_sample: 0.0,
        fixed: n as f64,
    }
}

fn plus(a: Amount, b: Amount) -> Amount {
    Amount {
        per_sample: a.per_sample + b.per_sample,
        fixed: a.fixed + b.fixed,
    }
}

/// One dispatch: an entry point of the op's shader file, its size, and the work it does for the
/// profile: floating-point operations (a multiply-add counts 2) and the bytes it must move at the
/// least (each input read once, each output written once), both for a given batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dispatch {
    pub entry: &'static str,
    pub size: Size,
    pub flops: Amount,
    pub bytes: Amount,
}

fn dispatch(entry: &'static str, size: Size) -> Dispatch {
    Dispatch {
        entry,
        size,
        flops: Amount::default(),
        bytes: Amount::default(),
    }
}

impl Dispatch {
    fn cost(self, flops: Amount, bytes: Amount) -> Dispatch {
        Dispatch {
            flops,
            bytes,
            ..self
        }
    }
}

/// An op's kernels. All its entry points share one bind group: the file's bindings, with `dims`
/// as binding 0.
#[derive(Debug, Clone, PartialEq)]
pub struct OpPlan {
    /// The shader file, `shaders/<file>.wgsl`.
    pub file: &'static str,
    pub dims: Vec<u32>,
    /// Override constants of every pipeline of the op (empty where its shader has none).
    pub constants: Vec<(&'static str, f64)>,
    /// Floats of scratch memory the op binds after its usual bindings (0: none).
    pub scratch: usize,
    pub forward: Vec<Dispatch>,
    /// In the order they run.
    pub backward: Vec<Dispatch>,
}

/// What the fast kernels of a layer with parameters fuse: a ReLU after it applied in its forward
/// epilogue, the mask of a ReLU before it applied in its input gradient, and likewise a dropout
/// after it (after the ReLU, if one is fused too) and the backward pass of a dropout before it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Fused {
    pub relu: bool,
    pub relu_mask: bool,
    pub dropout: Option<DropoutMask>,
    pub dropout_mask: Option<DropoutMask>,
}

/// A dropout layer's probability and mask seed, for the kernels that apply it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DropoutMask {
    pub p: f32,
    pub seed: u32,
}

impl Fused {
    /// The override constants of the fusions (the shaders' RELU, RELU_MASK, DROP_*, MASK_*).
    fn constants(self) -> Vec<(&'static str, f64)> {
        let flag = |b: bool| b as u8 as f64;
        let mut c = vec![
            ("RELU", flag(self.relu)),
            ("RELU_MASK", flag(self.relu_mask)),
            ("DROP_OUT", flag(self.dropout.is_some())),
            ("DROP_MASK", flag(self.dropout_mask.is_some())),
        ];
        if let Some(m) = self.dropout {
            c.extend([("DROP_P", m.p as f64), ("DROP_SEED", m.seed as f64)]);
        }
        if let Some(m) = self.dropout_mask {
            c.extend([("MASK_P", m.p as f64), ("MASK_SEED", m.seed as f64)]);
        }
        c
    }
}

fn g(x: Extent, y: Extent, z: Extent) -> Size {
    Size::Grid([x, y, z])
}

/// A convolution (shape for one sample). `input_grad`: whether the layer before needs the
/// gradient of the input (not for the first layer). `fast`: the subgroup kernels of
/// `conv2d.wgsl` (else the direct loops of `conv2d_portable.wgsl`, which fuse nothing).
pub fn conv2d(s: &Conv2dShape, bias: bool, input_grad: bool, fast: bool, fused: Fused) -> OpPlan {
    let (x_len, y_len) = (
        s.in_channels * s.in_height * s.in_width,
        s.out_channels * s.out_height() * s.out_width(),
    );
    let product = per_sample(2 * y_len * s.in_channels * s.kernel_size * s.kernel_size);
    let traffic = plus(per_sample(4 * (x_len + y_len)), fixed(4 * s.weight_len()));
    if !fast {
        assert_eq!(
            fused,
            Fused::default(),
            "the portable convolution fuses nothing"
        );
        return conv2d_portable(s, bias, input_grad, product, traffic);
    }
    let k = s.kernel_size;
    // Lanes of the weight gradient: (input channel, kernel row, block of 3 kernel columns).
    let lanes_w = s.in_channels * k * k.div_ceil(3);
    let wg_w = lanes_w.next_multiple_of(8).min(64);
    // Fewer than 8 such lanes (the first layer: one input channel) leaves most of a subgroup idle;
    // then lanes go over output channels instead (`conv2d_backward_weight_by_channel`, stride 1).
    // Measured on llvmpipe, batch 32, 1 -> 8 channels: 3x3 3.3 -> 2.2 ms; but 5x5 (10 lanes)
    // 5.2 -> 6.8 ms (each 3x3 block of taps reloads d_output), so 5x5 keeps the general kernel.
    let by_channel = lanes_w < 8 && s.stride == 1;
    let (weight_entry, groups_w) = if by_channel {
        (
            "conv2d_backward_weight_by_channel",
            s.in_channels * k.div_ceil(3).pow(2),
        )
    } else {
        ("conv2d_backward_weight", lanes_w.div_ceil(wg_w))
    };
    // Split-K slices of the weight gradient: enough workgroups to keep every core busy. Fixed per
    // layer (not per batch): the result's bits depend on it.
    let splits = (64 / (lanes_w.div_ceil(64) * s.out_channels.div_ceil(8))).clamp(2, 32);
    let reduced = s.weight_len() + if bias { s.out_channels } else { 0 };
    // Output channels per forward block: 16, or 8 for narrow layers (no half-empty blocks).
    let ob = if s.out_channels <= 8 { 8 } else { 16 };
    let mut backward = vec![
        dispatch(
            weight_entry,
            g(
                Extent::groups(groups_w),
                Extent::groups(s.out_channels.div_ceil(8)),
                Extent::groups(splits),
            ),
        )
        .cost(
            plus(product, per_sample(if bias { y_len } else { 0 })),
            plus(traffic, fixed(4 * splits * reduced)),
        ),
        dispatch(
            "conv2d_backward_weight_reduce",
            g(
                Extent::groups(reduced.div_ceil(64)),
                Extent::groups(1),
                Extent::groups(1),
            ),
        )
        .cost(fixed(splits * reduced), fixed(4 * (splits + 1) * reduced)),
    ];
    if input_grad {
        backward.push(
            dispatch(
                "conv2d_backward_input",
                g(
                    Extent::per_sample(s.in_height * s.in_width.div_ceil(4), 64),
                    Extent::groups(s.in_channels.div_ceil(16)),
                    Extent::groups(1),
                ),
            )
            .cost(product, traffic),
        );
    }
    let flag = |b: bool| b as u8 as f64;
    OpPlan {
        file: "conv2d",
        dims: kernels::conv_dims(s, bias),
        constants: vec![
            ("C_IN", s.in_channels as f64),
            ("IN_H", s.in_height as f64),
            ("IN_W", s.in_width as f64),
            ("C_OUT", s.out_channels as f64),
            ("KS", k as f64),
            ("STRIDE", s.stride as f64),
            ("PAD", s.padding as f64),
            ("HAS_BIAS", flag(bias)),
            ("SPLITS", splits as f64),
            ("WG_W", wg_w as f64),
            ("OB", ob as f64),
        ]
        .into_iter()
        .chain(fused.constants())
        .collect(),
        scratch: splits * reduced,
        forward: vec![if s.out_channels <= 8 {
            dispatch(
                "conv2d_forward_narrow",
                g(
                    Extent::per_sample(s.out_height() * s.out_width().div_ceil(8), 64),
                    Extent::groups(1),
                    Extent::groups(1),
                ),
            )
        } else {
            dispatch(
                "conv2d_forward",
                g(
                    Extent::per_sample(s.out_height() * s.out_width().div_ceil(4), 64),
                    Extent::groups(s.out_channels.div_ceil(ob)),
                    Extent::groups(1),
                ),
            )
        }
        .cost(product, traffic)],
        backward,
    }
}

fn conv2d_portable(
    s: &Conv2dShape,
    bias: bool,
    input_grad: bool,
    product: Amount,
    traffic: Amount,
) -> OpPlan {
    let y_len = s.out_channels * s.out_height() * s.out_width();
    let mut backward = vec![
        dispatch("conv2d_backward_weight", Size::Groups(s.weight_len())).cost(product, traffic),
    ];
    if bias {
        backward.push(
            dispatch("conv2d_backward_bias", Size::Groups(s.out_channels))
                .cost(per_sample(y_len), per_sample(4 * y_len)),
        );
    }
    if input_grad {
        backward.push(
            dispatch(
                "conv2d_backward_input",
                Size::PerSample(s.in_channels * s.in_height * s.in_width),
            )
            .cost(product, traffic),
        );
    }
    OpPlan {
        file: "conv2d_portable",
        dims: kernels::conv_dims(s, bias),
        constants: Vec::new(),
        scratch: 0,
        forward: vec![dispatch(
            "conv2d_forward",
            Size::PerSample(kernels::conv_forward_threads_per_sample(s)),
        )
        .cost(product, traffic)],
        backward,
    }
}

/// Workgroup size of `dense_forward_by_sample`: one llvmpipe subgroup, so that a batch of 32
/// spreads over four workgroups (cores) instead of one. On a GPU whose subgroups are wider the
/// workgroup is a partial subgroup; the kernel is the 10-way classifier, a small share of a step.
const WG_S: usize = 8;

/// A dense layer; `fast` and `fused` as for [`conv2d`].
pub fn dense(s: &DenseShape, bias: bool, input_grad: bool, fast: bool, fused: Fused) -> OpPlan {
    let (n_in, n_out) = (s.in_features, s.out_features);
    let product = per_sample(2 * n_in * n_out);
    let traffic = plus(per_sample(4 * (n_in + n_out)), fixed(4 * n_in * n_out));
    let bias_cost = (per_sample(n_out), per_sample(4 * n_out));
    if !fast {
        assert_eq!(
            fused,
            Fused::default(),
            "the portable dense layer fuses nothing"
        );
        let mut backward = vec![
            dispatch("dense_backward_weight", Size::Threads(n_in * n_out)).cost(product, traffic),
        ];
        if bias {
            backward.push(
                dispatch("dense_backward_bias", Size::Threads(n_out))
                    .cost(bias_cost.0, bias_cost.1),
            );
        }
        if input_grad {
            backward.push(
                dispatch("dense_backward_input", Size::PerSample(n_in)).cost(product, traffic),
            );
        }
        return OpPlan {
            file: "dense_portable",
            dims: kernels::dense_dims(s, bias),
            constants: Vec::new(),
            scratch: 0,
            forward: vec![dispatch("dense_forward", Size::PerSample(n_out)).cost(product, traffic)],
            backward,
        };
    }
    let strips_in = n_in.div_ceil(4);
    let strips_out = n_out.div_ceil(4);
    let wg_d = strips_out.next_multiple_of(8).min(64);
    // Rows of the 16-output blocks that carry outputs (the 10-way classifier: 10 of 16).
    let ob = n_out.next_multiple_of(2).min(16);
    // Backward workgroups: 64 lanes, or 8 when there are few 4-wide strips of `in`: 128 -> 10
    // had 32 strips in one 64-lane workgroup, half of it idle and all of it on one core.
    let wg_b = if strips_in >= 512 { 64 } else { 8 };
    // Samples per lane of `dense_forward_by_sample`. Measured on llvmpipe (profile medians):
    // 1352 -> 10 at batch 32: 1, 2, 4 samples 670, 500, 760 us (4: one workgroup, one core);
    // 128 -> 10 at batch 64: 185, 150, 183 us.
    let spl = 2;
    let one = Extent::groups(1);
    // Lanes over 4-wide strips of outputs, 16 samples a block; with fewer than 32 outputs there
    // are too few strips to fill a subgroup, so lanes go over samples instead (same result).
    let forward = if n_out >= 32 {
        dispatch(
            "dense_forward",
            g(
                Extent::groups(strips_out.div_ceil(wg_d)),
                Extent::per_sample(1, 16),
                one,
            ),
        )
    } else {
        dispatch(
            "dense_forward_by_sample",
            g(
                Extent::per_sample(1, WG_S * spl),
                Extent::groups(n_out.div_ceil(16)),
                one,
            ),
        )
    };
    // The weight gradient also writes the bias gradient (the same loop over the batch).
    let (weight_flops, weight_bytes) = if bias {
        (plus(product, bias_cost.0), plus(traffic, bias_cost.1))
    } else {
        (product, traffic)
    };
    let mut backward = vec![dispatch(
        "dense_backward_weight",
        g(
            Extent::groups(strips_in.div_ceil(wg_b)),
            Extent::groups(n_out.div_ceil(16)),
            one,
        ),
    )
    .cost(weight_flops, weight_bytes)];
    if input_grad {
        backward.push(
            dispatch(
                "dense_backward_input",
                g(
                    Extent::groups(strips_in.div_ceil(wg_b)),
                    Extent::per_sample(1, 16),
                    one,
                ),
            )
            .cost(product, traffic),
        );
    }
    let flag = |b: bool| b as u8 as f64;
    OpPlan {
        file: "dense",
        dims: kernels::dense_dims(s, bias),
        constants: vec![
            ("IN_F", n_in as f64),
            ("OUT_F", n_out as f64),
            ("HAS_BIAS", flag(bias)),
            ("WG_D", wg_d as f64),
            ("WG_S", WG_S as f64),
            ("SPL", spl as f64),
            ("OB", ob as f64),
            ("WG_B", wg_b as f64),
        ]
        .into_iter()
        .chain(fused.constants())
        .collect(),
        scratch: 0,
        forward: vec![forward.cost(product, traffic)],
        backward,
    }
}

/// Max pooling when `max`, else average pooling (shape for one sample). `relu_mask`: the layer
/// before is a ReLU whose backward pass this op's input gradient applies ([`relu_mask_fused`]).
/// `dropout`: the dropout after this layer, applied to its output ([`dropout_forward_fused`]).
pub fn pool(
    max: bool,
    s: &Pool2dShape,
    input_grad: bool,
    relu_mask: bool,
    dropout: Option<DropoutMask>,
) -> OpPlan {
    let (forward, backward) = if max {
        ("max_pool2d_forward", "max_pool2d_backward")
    } else {
        ("avg_pool2d_forward", "avg_pool2d_backward")
    };
    let (x_len, y_len) = (
        s.input_len() / s.batch.max(1),
        s.output_len() / s.batch.max(1),
    );
    let (flops, bytes) = (per_sample(x_len), per_sample(4 * (x_len + y_len)));
    let disjoint = max && s.stride == s.window;
    assert!(
        !relu_mask || disjoint,
        "only the disjoint max pooling applies a ReLU mask"
    );
    let backward = if disjoint {
        // One invocation per window-sized tile of the input.
        let tiles = s.channels * s.in_height.div_ceil(s.window) * s.in_width.div_ceil(s.window);
        dispatch("max_pool2d_backward_disjoint", Size::PerSample(tiles)).cost(flops, bytes)
    } else {
        dispatch(backward, Size::PerSample(x_len)).cost(flops, bytes)
    };
    let constants = vec![
        ("CHANNELS", s.channels as f64),
        ("IN_H", s.in_height as f64),
        ("IN_W", s.in_width as f64),
        ("OUT_H", s.out_height() as f64),
        ("OUT_W", s.out_width() as f64),
        ("WINDOW", s.window as f64),
        ("STRIDE", s.stride as f64),
        ("RELU_MASK", relu_mask as u8 as f64),
        ("DROP_OUT", dropout.is_some() as u8 as f64),
    ];
    let mut constants = constants;
    if let Some(m) = dropout {
        constants.extend([("DROP_P", m.p as f64), ("DROP_SEED", m.seed as f64)]);
    }
    OpPlan {
        file: "pool",
        dims: kernels::pool_dims(s),
        constants,
        scratch: 0,
        forward: vec![dispatch(forward, Size::PerSample(y_len)).cost(flops, bytes)],
        backward: if input_grad {
            vec![backward]
        } else {
            Vec::new()
        },
    }
}

/// Whether layer `i` is a ReLU whose backward pass the layer after it applies in its own input
/// gradient (a max pooling with disjoint windows; with the fast kernels also a convolution or a
/// dense layer, directly or through a dropout whose backward pass that layer applies too), so
/// that the ReLU runs no backward kernel and its input gradient is the next layer's (the executor
/// aliases the two buffers). Through a dropout the mask is the dropout's output > 0: a kept
/// element is the ReLU's output times 1 / (1 - p), so positive exactly where that output is.
pub fn relu_mask_fused(layers: &[ResolvedLayer], i: usize, fast: bool) -> bool {
    matches!(layers[i].layer, Layer::Relu)
        && i > 0
        && match layers.get(i + 1).map(|l| l.layer) {
            Some(Layer::MaxPool2d { window, stride }) => window == stride,
            Some(Layer::Conv2d { .. } | Layer::Dense { .. }) => fast,
            Some(Layer::Dropout { .. }) => dropout_backward_fused(layers, i + 1, fast),
            _ => false,
        }
}

/// Whether layer `i` is a ReLU that the convolution or dense layer before it applies in its
/// forward epilogue (fast kernels only), so that the ReLU runs no forward kernel and its output is
/// the layer before's (the executor aliases the two buffers).
pub fn relu_forward_fused(layers: &[ResolvedLayer], i: usize, fast: bool) -> bool {
    fast && i > 0
        && matches!(layers[i].layer, Layer::Relu)
        && matches!(
            layers[i - 1].layer,
            Layer::Conv2d { .. } | Layer::Dense { .. }
        )
}

/// Whether layer `i` is a dropout that the layer before it applies to its output: a max or
/// average pooling, or (fast kernels) a convolution or dense layer, after the ReLU it applies if
/// there is one between them. The dropout then runs no forward kernel and its output is that
/// layer's (the executor aliases the two buffers); the kernels apply it only in training.
pub fn dropout_forward_fused(layers: &[ResolvedLayer], i: usize, fast: bool) -> bool {
    i > 0
        && matches!(layers[i].layer, Layer::Dropout { .. })
        && match layers[i - 1].layer {
            Layer::MaxPool2d { .. } | Layer::AvgPool2d { .. } => true,
            Layer::Conv2d { .. } | Layer::Dense { .. } => fast,
            Layer::Relu => relu_forward_fused(layers, i - 1, fast),
            _ => false,
        }
}

/// Whether layer `i` is a dropout whose backward pass the next convolution or dense layer applies
/// in its input gradient (fast kernels; flattens between them are reshapes that keep the element
/// order, so the mask's element indices agree): the dropout runs no backward kernel and its input
/// gradient is that layer's (the executor aliases the buffers).
pub fn dropout_backward_fused(layers: &[ResolvedLayer], i: usize, fast: bool) -> bool {
    fast && i > 0
        && matches!(layers[i].layer, Layer::Dropout { .. })
        && matches!(
            layers[i + 1..]
                .iter()
                .map(|l| l.layer)
                .find(|l| !matches!(l, Layer::Flatten)),
            Some(Layer::Conv2d { .. } | Layer::Dense { .. })
        )
}

/// The mask of layer `i` if it is a dropout.
fn dropout_mask(layers: &[ResolvedLayer], i: usize, seed: u64) -> Option<DropoutMask> {
    match layers.get(i)?.layer {
        Layer::Dropout { p } => Some(DropoutMask {
            p,
            seed: dropout_seed(seed, layers[i].index),
        }),
        _ => None,
    }
}

/// An elementwise op of `file` whose entry points are `<name>_forward` and `<name>_backward`,
/// over `len` elements a sample.
fn elementwise(
    file: &'static str,
    entries: (&'static str, &'static str),
    dims: Vec<u32>,
    len: usize,
    input_grad: bool,
) -> OpPlan {
    OpPlan {
        file,
        dims,
        constants: Vec::new(),
        scratch: 0,
        forward: vec![
            dispatch(entries.0, Size::PerSample(len)).cost(per_sample(len), per_sample(8 * len))
        ],
        backward: if input_grad {
            vec![dispatch(entries.1, Size::PerSample(len))
                .cost(per_sample(len), per_sample(12 * len))]
        } else {
            Vec::new()
        },
    }
}

/// ReLU, tanh or sigmoid over `per_sample` elements a sample.
pub fn activation(layer: &Layer, per_sample: usize, input_grad: bool) -> OpPlan {
    let entries = match layer {
        Layer::Relu => ("relu_forward", "relu_backward"),
        Layer::Tanh => ("tanh_forward", "tanh_backward"),
        Layer::Sigmoid => ("sigmoid_forward", "sigmoid_backward"),
        other => panic!("{other} is not an activation"),
    };
    let dims = kernels::element_dims(per_sample);
    elementwise("activation", entries, dims, per_sample, input_grad)
}

/// Dropout with probability `p` and the layer's mask seed, over `per_sample` elements a sample.
pub fn dropout(per_sample: usize, p: f32, seed: u32, input_grad: bool) -> OpPlan {
    let dims = kernels::dropout_dims(per_sample, p, seed);
    let entries = ("dropout_forward", "dropout_backward");
    let mut op = elementwise("dropout", entries, dims, per_sample, input_grad);
    op.constants = vec![("DROP_P", p as f64), ("DROP_SEED", seed as f64)];
    op
}

/// Batch normalization (shape for one sample): the statistics, one workgroup a channel, then the
/// elementwise pass; backward, the two sums a channel, then the input gradient. `scratch` holds
/// the pass's mean and 1/sqrt(var + eps).
pub fn batch_norm(s: &BatchNormShape, input_grad: bool) -> OpPlan {
    let len = s.channels * s.spatial;
    let mut backward = vec![
        dispatch("batchnorm_backward_reduce", Size::Groups(s.channels))
            .cost(per_sample(4 * len), per_sample(8 * len)),
    ];
    if input_grad {
        backward.push(
            dispatch("batchnorm_backward_input", Size::PerSample(len))
                .cost(per_sample(6 * len), per_sample(12 * len)),
        );
    }
    OpPlan {
        file: "batchnorm",
        dims: kernels::norm_dims(s),
        constants: Vec::new(),
        scratch: 2 * s.channels,
        forward: vec![
            dispatch("batchnorm_stats", Size::Groups(s.channels))
                .cost(per_sample(3 * len), per_sample(8 * len)),
            dispatch("batchnorm_forward", Size::PerSample(len))
                .cost(per_sample(3 * len), per_sample(8 * len)),
        ],
        backward,
    }
}

/// Layer `i` of a network; `None` for a flatten, which runs nothing (its buffers alias), and for
/// a dropout that its neighbours apply in both directions.
pub fn layer(layers: &[ResolvedLayer], i: usize, seed: u64, fast: bool) -> Option<OpPlan> {
    let l = &layers[i];
    // The first layer's input gradient is never needed; a fused ReLU's is computed by the next
    // layer.
    let input_grad = i > 0 && !relu_mask_fused(layers, i, fast);
    let relu_mask = i > 0 && relu_mask_fused(layers, i - 1, fast);
    let relu = i + 1 < layers.len() && relu_forward_fused(layers, i + 1, fast);
    // The dropout this layer applies to its output: right after it, or after its fused ReLU.
    let after = if relu { i + 2 } else { i + 1 };
    let dropout_after = (after < layers.len() && dropout_forward_fused(layers, after, fast))
        .then(|| dropout_mask(layers, after, seed))
        .flatten();
    // The dropout whose backward pass this layer's input gradient applies (flattens between).
    let before = layers[..i]
        .iter()
        .rposition(|l| !matches!(l.layer, Layer::Flatten));
    let dropout_before = before
        .filter(|&b| dropout_backward_fused(layers, b, fast))
        .and_then(|b| dropout_mask(layers, b, seed));
    // A ReLU before that dropout: its mask too.
    let relu_mask = relu_mask
        || before.is_some_and(|b| {
            dropout_before.is_some() && b > 0 && relu_mask_fused(layers, b - 1, fast)
        });
    let fused = Fused {
        relu,
        relu_mask,
        dropout: dropout_after,
        dropout_mask: dropout_before,
    };
    Some(match l.layer {
        Layer::Conv2d { bias, .. } => conv2d(&l.conv_shape(1), bias, input_grad, fast, fused),
        Layer::Dense { bias, .. } => dense(&l.dense_shape(1), bias, input_grad, fast, fused),
        Layer::MaxPool2d { .. } => {
            pool(true, &l.pool_shape(1), input_grad, relu_mask, dropout_after)
        }
        Layer::AvgPool2d { .. } => pool(false, &l.pool_shape(1), input_grad, false, dropout_after),
        Layer::Relu if relu_forward_fused(layers, i, fast) => {
            let mut op = activation(&l.layer, l.output.len(), input_grad);
            op.forward.clear();
            op
        }
        Layer::Relu | Layer::Tanh | Layer::Sigmoid => {
            activation(&l.layer, l.output.len(), input_grad)
        }
        Layer::Dropout { p } => {
            let (forward, backward) = (
                dropout_forward_fused(layers, i, fast),
                dropout_backward_fused(layers, i, fast),
            );
            if forward && (backward || !input_grad) {
                return None;
            }
            let mut op = dropout(l.output.len(), p, dropout_seed(seed, l.index), input_grad);
            if forward {
                op.forward.clear();
            }
            if backward {
                op.backward.clear();
            }
            op
        }
        Layer::BatchNorm => batch_norm(&l.norm_shape(1), input_grad),
        Layer::Flatten => return None,
    })
}

/// The loss and its gradient on the logits (forward), then the metrics accumulation.
pub fn loss(classes: usize, loss: Loss) -> OpPlan {
    OpPlan {
        file: "loss",
        constants: Vec::new(),
        scratch: 0,
        dims: kernels::loss_dims(classes, loss),
        forward: vec![
            dispatch("loss_forward_backward", Size::PerSample(1))
                .cost(per_sample(6 * classes), per_sample(4 * (2 * classes + 3))),
            dispatch("accumulate_metrics", Size::Groups(1)).cost(per_sample(2), per_sample(8)),
        ],
        backward: Vec::new(),
    }
}

/// Gathering a batch of images of `pixels` pixels, in the epoch's order or `sequential`ly; with
/// `augment` (the ranges and [`crate::ops::augment_seed`]'s stream), each image augmented.
pub fn gather_batch(
    pixels: usize,
    sequential: bool,
    norm: Normalization,
    augment: Option<(Augment, u32)>,
) -> OpPlan {
    let mut constants = vec![
        ("PIXELS", pixels as f64),
        ("SEQUENTIAL", sequential as u8 as f64),
        // f32 -> f64 -> f32 is exact: the shader normalises with the same numbers
        ("MEAN", norm.mean as f64),
        ("DEVIATION", norm.std as f64),
    ];
    let forward = match augment {
        None => dispatch("gather_batch", Size::PerSample(pixels.div_ceil(4)))
            .cost(per_sample(2 * pixels), per_sample(5 * pixels + 8)),
        Some((a, seed)) => {
            let side = (pixels as f64).sqrt() as usize;
            assert_eq!(side * side, pixels, "augmentation needs square images");
            constants.extend([
                ("SIDE", side as f64),
                ("AUG_SHIFT", a.shift as f64),
                ("AUG_ROTATE", a.rotate as f64),
                ("AUG_SCALE", a.scale as f64),
                ("AUG_FLIP", a.flip as u8 as f64),
                ("AUG_SEED", seed as f64),
            ]);
            dispatch("gather_batch_augmented", Size::PerSample(pixels))
                .cost(per_sample(20 * pixels), per_sample(8 * pixels + 8))
        }
    };
    OpPlan {
        file: "batch",
        constants,
        scratch: 0,
        dims: kernels::batch_dims(pixels, sequential, norm.mean, norm.std),
        forward: vec![forward],
        backward: Vec::new(),
    }
}

/// The SGD step of `len` values (a multiple of 4: the kernel takes four at a time), all the
/// parameters at once in the executor.
pub fn sgd(len: usize, lr: f32, momentum: f32, weight_decay: f32) -> OpPlan {
    assert!(
        len.is_multiple_of(4),
        "the SGD kernel takes 4 values at a time"
    );
    OpPlan {
        file: "sgd",
        constants: Vec::new(),
        scratch: 0,
        dims: kernels::sgd_dims(len, lr, momentum, weight_decay),
        forward: vec![
            dispatch("sgd_update", Size::Threads(len / 4)).cost(fixed(4 * len), fixed(20 * len))
        ],
        backward: Vec::new(),
    }
}

/// The Adam or AdamW step of `len` values (a multiple of 4, as for [`sgd`]); the step's scalars
/// come from a buffer of their own.
pub fn adam(len: usize) -> OpPlan {
    assert!(
        len.is_multiple_of(4),
        "the Adam kernel takes 4 values at a time"
    );
    OpPlan {
        file: "adam",
        constants: Vec::new(),
        scratch: 0,
        dims: kernels::adam_dims(len),
        forward: vec![
            dispatch("adam_update", Size::Threads(len / 4)).cost(fixed(12 * len), fixed(24 * len))
        ],
        backward: Vec::new(),
    }
}
