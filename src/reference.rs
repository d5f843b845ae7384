//! The CPU reference: every layer's forward and backward pass as plain loops. This is the
//! specification that the GPU shaders (and any faster CPU path) are checked against, so it is
//! written to be read and checked by eye, not to be fast.
//!
//! Conventions, shared with `shaders/`:
//! - Tensors are flat slices in NCHW order: `x[((n * C + c) * H + h) * W + w]`.
//! - Parameter layouts are PyTorch's: conv weight `[out, in, k, k]`, dense weight `[out, in]`.
//! - A `*_forward` function writes its whole output; a `*_backward*` function writes its whole
//!   gradient (it zeroes first where it accumulates). Names match the WGSL entry points.
//! - Everything is generic over the float type: f32 for training, f64 for gradient checks.

use num_traits::Float;

fn cast<T: Float>(value: f64) -> T {
    T::from(value).expect("every f64 constant fits in the float type")
}

// ---------------------------------------------------------------------------------------------
// 2-D convolution
// ---------------------------------------------------------------------------------------------

/// The dimensions of one convolution over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dShape {
    pub batch: usize,
    pub in_channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub out_channels: usize,
    pub kernel_size: usize,
    pub stride: usize,
    pub padding: usize,
}

impl Conv2dShape {
    pub fn out_height(&self) -> usize {
        (self.in_height + 2 * self.padding - self.kernel_size) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.in_width + 2 * self.padding - self.kernel_size) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_height * self.in_width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_height() * self.out_width()
    }
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.in_channels * self.kernel_size * self.kernel_size
    }

    /// The input row/column a kernel tap reads for an output position, or `None` in the padding.
    fn input_pos(&self, out_pos: usize, tap: usize, in_size: usize) -> Option<usize> {
        let pos = (out_pos * self.stride + tap) as isize - self.padding as isize;
        (pos >= 0 && (pos as usize) < in_size).then_some(pos as usize)
    }
}

/// `output[n, o, y, x] = bias[o] + sum_{c, ky, kx} input[n, c, y*s + ky - p, x*s + kx - p] * weight[o, c, ky, kx]`
/// (taps that fall in the zero padding contribute nothing).
pub fn conv2d_forward<T: Float>(
    s: &Conv2dShape,
    input: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    output: &mut [T],
) {
    let (k, oh, ow) = (s.kernel_size, s.out_height(), s.out_width());
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut sum = bias.map_or(T::zero(), |b| b[o]);
                    for c in 0..s.in_channels {
                        for ky in 0..k {
                            let Some(iy) = s.input_pos(oy, ky, s.in_height) else {
                                continue;
                            };
                            for kx in 0..k {
                                let Some(ix) = s.input_pos(ox, kx, s.in_width) else {
                                    continue;
                                };
                                let x = input[((n * s.in_channels + c) * s.in_height + iy)
                                    * s.in_width
                                    + ix];
                                let w = weight[((o * s.in_channels + c) * k + ky) * k + kx];
                                sum = sum + x * w;
                            }
                        }
                    }
                    output[((n * s.out_channels + o) * oh + oy) * ow + ox] = sum;
                }
            }
        }
    }
}

/// Gradient with respect to the input: every output gradient flows back through the taps that
/// produced it, `d_input[n, c, iy, ix] += d_output[n, o, y, x] * weight[o, c, ky, kx]`.
pub fn conv2d_backward_input<T: Float>(
    s: &Conv2dShape,
    d_output: &[T],
    weight: &[T],
    d_input: &mut [T],
) {
    let (k, oh, ow) = (s.kernel_size, s.out_height(), s.out_width());
    d_input.fill(T::zero());
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = d_output[((n * s.out_channels + o) * oh + oy) * ow + ox];
                    for c in 0..s.in_channels {
                        for ky in 0..k {
                            let Some(iy) = s.input_pos(oy, ky, s.in_height) else {
                                continue;
                            };
                            for kx in 0..k {
                                let Some(ix) = s.input_pos(ox, kx, s.in_width) else {
                                    continue;
                                };
                                let i =
                                    ((n * s.in_channels + c) * s.in_height + iy) * s.in_width + ix;
                                d_input[i] = d_input[i]
                                    + g * weight[((o * s.in_channels + c) * k + ky) * k + kx];
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Gradients with respect to the weights and the bias, summed over the batch:
/// `d_weight[o, c, ky, kx] = sum_{n, y, x} d_output[n, o, y, x] * input[n, c, iy, ix]`,
/// `d_bias[o] = sum_{n, y, x} d_output[n, o, y, x]`.
pub fn conv2d_backward_weight<T: Float>(
    s: &Conv2dShape,
    input: &[T],
    d_output: &[T],
    d_weight: &mut [T],
    d_bias: Option<&mut [T]>,
) {
    let (k, oh, ow) = (s.kernel_size, s.out_height(), s.out_width());
    d_weight.fill(T::zero());
    for n in 0..s.batch {
        for o in 0..s.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = d_output[((n * s.out_channels + o) * oh + oy) * ow + ox];
                    for c in 0..s.in_channels {
                        for ky in 0..k {
                            let Some(iy) = s.input_pos(oy, ky, s.in_height) else {
                                continue;
                            };
                            for kx in 0..k {
                                let Some(ix) = s.input_pos(ox, kx, s.in_width) else {
                                    continue;
                                };
                                let wi = ((o * s.in_channels + c) * k + ky) * k + kx;
                                let x = input[((n * s.in_channels + c) * s.in_height + iy)
                                    * s.in_width
                                    + ix];
                                d_weight[wi] = d_weight[wi] + g * x;
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some(d_bias) = d_bias {
        for o in 0..s.out_channels {
            let mut sum = T::zero();
            for n in 0..s.batch {
                for i in 0..oh * ow {
                    sum = sum + d_output[(n * s.out_channels + o) * oh * ow + i];
                }
            }
            d_bias[o] = sum;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pooling (no padding; the output size rounds down, as PyTorch's default)
// ---------------------------------------------------------------------------------------------

/// The dimensions of one pooling layer over a batch; channels are pooled independently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool2dShape {
    pub batch: usize,
    pub channels: usize,
    pub in_height: usize,
    pub in_width: usize,
    pub window: usize,
    pub stride: usize,
}

impl Pool2dShape {
    pub fn out_height(&self) -> usize {
        (self.in_height - self.window) / self.stride + 1
    }
    pub fn out_width(&self) -> usize {
        (self.in_width - self.window) / self.stride + 1
    }
    pub fn input_len(&self) -> usize {
        self.batch * self.channels * self.in_height * self.in_width
    }
    pub fn output_len(&self) -> usize {
        self.batch * self.channels * self.out_height() * self.out_width()
    }
}

/// The flat input index of the first maximum of one pooling window (row-major scan, strict `>`:
/// with ties the earliest element wins). Both max-pool passes use it, so they agree.
fn max_pool_argmax<T: Float>(
    s: &Pool2dShape,
    input: &[T],
    plane: usize,
    oy: usize,
    ox: usize,
) -> usize {
    let mut best = plane * s.in_height * s.in_width + (oy * s.stride) * s.in_width + ox * s.stride;
    for wy in 0..s.window {
        for wx in 0..s.window {
            let i = plane * s.in_height * s.in_width
                + (oy * s.stride + wy) * s.in_width
                + ox * s.stride
                + wx;
            if input[i] > input[best] {
                best = i;
            }
        }
    }
    best
}

/// `output[n, c, y, x] = max` over the window at `(y*stride, x*stride)`.
pub fn max_pool2d_forward<T: Float>(s: &Pool2dShape, input: &[T], output: &mut [T]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                output[(plane * oh + oy) * ow + ox] =
                    input[max_pool_argmax(s, input, plane, oy, ox)];
            }
        }
    }
}

/// Each window's output gradient goes to exactly one input: its first maximum (see
/// `max_pool_argmax`), even when several inputs tie. Overlapping windows add up.
pub fn max_pool2d_backward<T: Float>(
    s: &Pool2dShape,
    input: &[T],
    d_output: &[T],
    d_input: &mut [T],
) {
    let (oh, ow) = (s.out_height(), s.out_width());
    d_input.fill(T::zero());
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let i = max_pool_argmax(s, input, plane, oy, ox);
                d_input[i] = d_input[i] + d_output[(plane * oh + oy) * ow + ox];
            }
        }
    }
}

/// `output[n, c, y, x] =` mean of the `window x window` inputs at `(y*stride, x*stride)`.
pub fn avg_pool2d_forward<T: Float>(s: &Pool2dShape, input: &[T], output: &mut [T]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let count: T = cast((s.window * s.window) as f64);
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let mut sum = T::zero();
                for wy in 0..s.window {
                    for wx in 0..s.window {
                        sum = sum
                            + input[(plane * s.in_height + oy * s.stride + wy) * s.in_width
                                + ox * s.stride
                                + wx];
                    }
                }
                output[(plane * oh + oy) * ow + ox] = sum / count;
            }
        }
    }
}

/// Each window's output gradient is shared equally by its `window x window` inputs.
pub fn avg_pool2d_backward<T: Float>(s: &Pool2dShape, d_output: &[T], d_input: &mut [T]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let count: T = cast((s.window * s.window) as f64);
    d_input.fill(T::zero());
    for plane in 0..s.batch * s.channels {
        for oy in 0..oh {
            for ox in 0..ow {
                let share = d_output[(plane * oh + oy) * ow + ox] / count;
                for wy in 0..s.window {
                    for wx in 0..s.window {
                        let i = (plane * s.in_height + oy * s.stride + wy) * s.in_width
                            + ox * s.stride
                            + wx;
                        d_input[i] = d_input[i] + share;
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Dense (fully connected); the input is the flattened NCHW tensor, one row per sample
// ---------------------------------------------------------------------------------------------

/// The dimensions of one dense layer over a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DenseShape {
    pub batch: usize,
    pub in_features: usize,
    pub out_features: usize,
}

/// `output[n, o] = bias[o] + sum_i input[n, i] * weight[o, i]`.
pub fn dense_forward<T: Float>(
    s: &DenseShape,
    input: &[T],
    weight: &[T],
    bias: Option<&[T]>,
    output: &mut [T],
) {
    for n in 0..s.batch {
        for o in 0..s.out_features {
            let mut sum = bias.map_or(T::zero(), |b| b[o]);
            for i in 0..s.in_features {
                sum = sum + input[n * s.in_features + i] * weight[o * s.in_features + i];
            }
            output[n * s.out_features + o] = sum;
        }
    }
}

/// `d_input[n, i] = sum_o d_output[n, o] * weight[o, i]`.
pub fn dense_backward_input<T: Float>(
    s: &DenseShape,
    d_output: &[T],
    weight: &[T],
    d_input: &mut [T],
) {
    for n in 0..s.batch {
        for i in 0..s.in_features {
            let mut sum = T::zero();
            for o in 0..s.out_features {
                sum = sum + d_output[n * s.out_features + o] * weight[o * s.in_features + i];
            }
            d_input[n * s.in_features + i] = sum;
        }
    }
}

/// `d_weight[o, i] = sum_n d_output[n, o] * input[n, i]`, `d_bias[o] = sum_n d_output[n, o]`.
pub fn dense_backward_weight<T: Float>(
    s: &DenseShape,
    input: &[T],
    d_output: &[T],
    d_weight: &mut [T],
    d_bias: Option<&mut [T]>,
) {
    for o in 0..s.out_features {
        for i in 0..s.in_features {
            let mut sum = T::zero();
            for n in 0..s.batch {
                sum = sum + d_output[n * s.out_features + o] * input[n * s.in_features + i];
            }
            d_weight[o * s.in_features + i] = sum;
        }
    }
    if let Some(d_bias) = d_bias {
        for o in 0..s.out_features {
            let mut sum = T::zero();
            for n in 0..s.batch {
                sum = sum + d_output[n * s.out_features + o];
            }
            d_bias[o] = sum;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Activations: elementwise; the backward passes use the forward *output*
// ---------------------------------------------------------------------------------------------

pub fn relu_forward<T: Float>(input: &[T], output: &mut [T]) {
    for (y, &x) in output.iter_mut().zip(input) {
        *y = if x > T::zero() { x } else { T::zero() };
    }
}

/// The gradient passes where the output is positive (that is, where the input was).
pub fn relu_backward<T: Float>(output: &[T], d_output: &[T], d_input: &mut [T]) {
    for ((d_x, &y), &d_y) in d_input.iter_mut().zip(output).zip(d_output) {
        *d_x = if y > T::zero() { d_y } else { T::zero() };
    }
}

pub fn tanh_forward<T: Float>(input: &[T], output: &mut [T]) {
    for (y, &x) in output.iter_mut().zip(input) {
        *y = x.tanh();
    }
}

/// `d tanh(x) / dx = 1 - tanh(x)^2`.
pub fn tanh_backward<T: Float>(output: &[T], d_output: &[T], d_input: &mut [T]) {
    for i in 0..output.len() {
        d_input[i] = d_output[i] * (T::one() - output[i] * output[i]);
    }
}

/// `1 / (1 + e^-x)`, written so that neither branch overflows.
pub fn sigmoid<T: Float>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

pub fn sigmoid_forward<T: Float>(input: &[T], output: &mut [T]) {
    for (y, &x) in output.iter_mut().zip(input) {
        *y = sigmoid(x);
    }
}

/// `d sigmoid(x) / dx = sigmoid(x) * (1 - sigmoid(x))`.
pub fn sigmoid_backward<T: Float>(output: &[T], d_output: &[T], d_input: &mut [T]) {
    for i in 0..output.len() {
        d_input[i] = d_output[i] * output[i] * (T::one() - output[i]);
    }
}

// ---------------------------------------------------------------------------------------------
// Dropout: inverted scaling, mask from a counter-based hash so any implementation draws it alike
// ---------------------------------------------------------------------------------------------

/// Chris Wellons' `lowbias32` integer hash: good avalanche in a few u32 operations that WGSL has.
pub fn hash_u32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A uniform number in [0, 1) drawn from (seed, step, element index) alone:
/// `hash(hash(hash(seed) ^ step) ^ index)`, top 24 bits, times 2^-24 (exact in f32).
pub fn dropout_uniform(seed: u32, step: u32, index: u32) -> f32 {
    let h = hash_u32(hash_u32(hash_u32(seed) ^ step) ^ index);
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether element `index` of the batch tensor is kept: kept when its uniform is `>= p`.
pub fn dropout_keep(p: f32, seed: u32, step: u32, index: u32) -> bool {
    dropout_uniform(seed, step, index) >= p
}

/// Training-time dropout: a kept element is scaled by `1 / (1 - p)`, a dropped one is zero.
/// (At evaluation, dropout is the identity and is not called.)
pub fn dropout_forward<T: Float>(p: f32, seed: u32, step: u32, input: &[T], output: &mut [T]) {
    let scale = T::one() / (T::one() - cast(p as f64));
    for i in 0..input.len() {
        output[i] = if dropout_keep(p, seed, step, i as u32) {
            input[i] * scale
        } else {
            T::zero()
        };
    }
}

/// The same mask, redrawn from the same (seed, step, index), applied to the gradient.
pub fn dropout_backward<T: Float>(p: f32, seed: u32, step: u32, d_output: &[T], d_input: &mut [T]) {
    let scale = T::one() / (T::one() - cast(p as f64));
    for i in 0..d_output.len() {
        d_input[i] = if dropout_keep(p, seed, step, i as u32) {
            d_output[i] * scale
        } else {
            T::zero()
        };
    }
}

// ---------------------------------------------------------------------------------------------
// Losses on the logits `[batch, classes]`; each returns the batch mean and its gradient
// ---------------------------------------------------------------------------------------------

/// Softmax + cross-entropy, fused: `loss_n = logsumexp(z_n) - z_n[label_n]`, computed after
/// subtracting the row maximum so that large logits do not overflow. Returns the mean over the batch.
pub fn softmax_cross_entropy_forward<T: Float>(classes: usize, logits: &[T], labels: &[u8]) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        let row = &logits[n * classes..(n + 1) * classes];
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        let sum_exp = row.iter().fold(T::zero(), |s, &z| s + (z - max).exp());
        total = total + (sum_exp.ln() + max - row[label as usize]);
    }
    total / cast(labels.len() as f64)
}

/// `d_logits[n, k] = (softmax(z_n)[k] - [k == label_n]) / batch`.
pub fn softmax_cross_entropy_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let batch: T = cast(labels.len() as f64);
    for (n, &label) in labels.iter().enumerate() {
        let row = &logits[n * classes..(n + 1) * classes];
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        let sum_exp = row.iter().fold(T::zero(), |s, &z| s + (z - max).exp());
        for k in 0..classes {
            let target = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            d_logits[n * classes + k] = ((row[k] - max).exp() / sum_exp - target) / batch;
        }
    }
}

/// Sigmoid outputs against one-hot targets with binary cross-entropy, from the logits so that it
/// is stable: `max(z, 0) - z*y + ln(1 + e^-|z|)`. Returns the mean over all `batch * classes` outputs.
pub fn sigmoid_binary_cross_entropy_forward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let z = logits[n * classes + k];
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            total = total + (z.max(T::zero()) - z * y + (-z.abs()).exp().ln_1p());
        }
    }
    total / cast((labels.len() * classes) as f64)
}

/// `d_logits = (sigmoid(z) - y) / (batch * classes)`.
pub fn sigmoid_binary_cross_entropy_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let count: T = cast((labels.len() * classes) as f64);
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            d_logits[n * classes + k] = (sigmoid(logits[n * classes + k]) - y) / count;
        }
    }
}

/// Sigmoid outputs against one-hot targets with squared error: mean of `(sigmoid(z) - y)^2` over
/// all `batch * classes` outputs.
pub fn sigmoid_mean_squared_error_forward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            let diff = sigmoid(logits[n * classes + k]) - y;
            total = total + diff * diff;
        }
    }
    total / cast((labels.len() * classes) as f64)
}

/// `d_logits = 2 (p - y) p (1 - p) / (batch * classes)` with `p = sigmoid(z)`.
pub fn sigmoid_mean_squared_error_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let count: T = cast((labels.len() * classes) as f64);
    let two: T = cast(2.0);
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            let p = sigmoid(logits[n * classes + k]);
            d_logits[n * classes + k] = two * (p - y) * p * (T::one() - p) / count;
        }
    }
}

/// How many rows have their first maximum logit at the label.
pub fn count_correct<T: Float>(classes: usize, logits: &[T], labels: &[u8]) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(n, &label)| {
            let row = &logits[n * classes..(n + 1) * classes];
            let mut best = 0;
            for k in 1..classes {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best == label as usize
        })
        .count()
}

// ---------------------------------------------------------------------------------------------
// Optimizer
// ---------------------------------------------------------------------------------------------

/// SGD with momentum, as PyTorch's `torch.optim.SGD` (no dampening, no Nesterov):
/// `velocity = momentum * velocity + grad; param -= lr * velocity`. With momentum 0 this is plain SGD.
pub fn sgd_update<T: Float>(lr: T, momentum: T, param: &mut [T], grad: &[T], velocity: &mut [T]) {
    for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
        *v = momentum * *v + g;
        *p = *p - lr * *v;
    }
}
