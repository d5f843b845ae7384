//! The fast CPU executor: the same layers as [`crate::reference`], computed with im2col + SGEMM
//! (`matrixmultiply`), spread over all cores with `rayon`, into buffers allocated once per run.
//! It is held to the reference by `tests/fast_cpu.rs`, op by op and over training trajectories.
//!
//! Layouts are the reference's (NCHW, PyTorch parameter layouts). A convolution keeps the im2col
//! matrix of each sample, `[in * k * k, out_h * out_w]`, from the forward pass for the weight
//! gradient, then reuses the same memory for the input gradient's columns. Weight gradients are
//! summed over a fixed number of batch chunks (not one per thread), so results do not depend on
//! how many cores there are.

use anyhow::Result;
use rayon::prelude::*;

use crate::cpu::{loss_backward_into, loss_forward};
use crate::data::{Dataset, Normalization, Split, IMAGE_PIXELS};
use crate::executor::{Diverged, Executor, Metrics, Sgd};
use crate::network::{dropout_seed, Network, ResolvedLayer};
use crate::reference::{self as r, Conv2dShape, DenseShape, Pool2dShape};
use crate::spec::Layer;

/// Weight gradients are reduced over this many batch chunks, whatever the number of cores.
const REDUCE_CHUNKS: usize = 8;

/// `c = a * b (+ c if accumulate)` for row-major-or-strided matrices: a is m x k, b is k x n.
/// Strides are (row stride, column stride) in elements.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    c: &mut [f32],
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let last =
        |rows: usize, cols: usize, (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs;
    assert!(
        k == 0 || (a.len() > last(m, k, a_strides) && b.len() > last(k, n, b_strides)),
        "sgemm operands too short"
    );
    assert!(c.len() >= m * n, "sgemm output too short");
    // SAFETY: the asserts above keep every index of a, b (k > 0) and c = m x n row-major in bounds.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            a_strides.0 as isize,
            a_strides.1 as isize,
            b.as_ptr(),
            b_strides.0 as isize,
            b_strides.1 as isize,
            if accumulate { 1.0 } else { 0.0 },
            c.as_mut_ptr(),
            n as isize,
            1,
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// Rows of one sample's im2col matrix: `in_channels * k * k`.
pub fn conv_col_rows(s: &Conv2dShape) -> usize {
    s.in_channels * s.kernel_size * s.kernel_size
}

/// Columns of one sample's im2col matrix: `out_h * out_w`.
pub fn conv_col_len(s: &Conv2dShape) -> usize {
    conv_col_rows(s) * s.out_height() * s.out_width()
}

/// One sample's input `[in, H, W]` as the matrix `[in * k * k, out_h * out_w]` (zeros in padding).
fn im2col(s: &Conv2dShape, x: &[f32], cols: &mut [f32]) {
    let (k, oh, ow) = (s.kernel_size, s.out_height(), s.out_width());
    for c in 0..s.in_channels {
        for ky in 0..k {
            for kx in 0..k {
                let row = &mut cols[((c * k + ky) * k + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                    let out = &mut row[oy * ow..(oy + 1) * ow];
                    if iy < 0 || iy >= s.in_height as isize {
                        out.fill(0.0);
                        continue;
                    }
                    let in_row = &x[(c * s.in_height + iy as usize) * s.in_width..][..s.in_width];
                    for (ox, v) in out.iter_mut().enumerate() {
                        let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                        *v = if ix >= 0 && (ix as usize) < s.in_width {
                            in_row[ix as usize]
                        } else {
                            0.0
                        };
                    }
                }
            }
        }
    }
}

/// The adjoint of [`im2col`]: add every column entry back into the input position it came from.
fn col2im(s: &Conv2dShape, cols: &[f32], dx: &mut [f32]) {
    let (k, oh, ow) = (s.kernel_size, s.out_height(), s.out_width());
    dx.fill(0.0);
    for c in 0..s.in_channels {
        for ky in 0..k {
            for kx in 0..k {
                let row = &cols[((c * k + ky) * k + kx) * oh * ow..][..oh * ow];
                for oy in 0..oh {
                    let iy = (oy * s.stride + ky) as isize - s.padding as isize;
                    if iy < 0 || iy >= s.in_height as isize {
                        continue;
                    }
                    let in_row =
                        &mut dx[(c * s.in_height + iy as usize) * s.in_width..][..s.in_width];
                    for (ox, &v) in row[oy * ow..(oy + 1) * ow].iter().enumerate() {
                        let ix = (ox * s.stride + kx) as isize - s.padding as isize;
                        if ix >= 0 && (ix as usize) < s.in_width {
                            in_row[ix as usize] += v;
                        }
                    }
                }
            }
        }
    }
}

/// Forward: per sample, `cols = im2col(x)`, `y[out, HW] = weight[out, K] * cols[K, HW] + bias`.
/// Keeps the columns in `cols` (`batch * conv_col_len`) for [`conv2d_backward_weight`].
pub fn conv2d_forward(
    s: &Conv2dShape,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
    cols: &mut [f32],
) {
    let (rows, hw) = (conv_col_rows(s), s.out_height() * s.out_width());
    let in_len = s.in_channels * s.in_height * s.in_width;
    output[..s.output_len()]
        .par_chunks_mut(s.out_channels * hw)
        .zip(cols[..s.batch * rows * hw].par_chunks_mut(rows * hw))
        .zip(input[..s.input_len()].par_chunks(in_len))
        .for_each(|((y, col), x)| {
            im2col(s, x, col);
            match bias {
                Some(b) => {
                    for (o, plane) in y.chunks_mut(hw).enumerate() {
                        plane.fill(b[o]);
                    }
                }
                None => y.fill(0.0),
            }
            sgemm(
                s.out_channels,
                rows,
                hw,
                weight,
                (rows, 1),
                col,
                (hw, 1),
                y,
                true,
            );
        });
}

/// Weight (and bias) gradient from the forward pass's columns: `d_weight = sum_n d_y_n * cols_n^T`.
pub fn conv2d_backward_weight(
    s: &Conv2dShape,
    cols: &[f32],
    d_output: &[f32],
    d_weight: &mut [f32],
    d_bias: Option<&mut [f32]>,
    partials: &mut [f32],
) {
    let (rows, hw) = (conv_col_rows(s), s.out_height() * s.out_width());
    let w_len = s.out_channels * rows;
    let per_chunk = s.batch.div_ceil(REDUCE_CHUNKS);
    let chunks = s.batch.div_ceil(per_chunk);
    partials[..chunks * w_len]
        .par_chunks_mut(w_len)
        .enumerate()
        .for_each(|(chunk, partial)| {
            partial.fill(0.0);
            for n in chunk * per_chunk..((chunk + 1) * per_chunk).min(s.batch) {
                let dy = &d_output[n * s.out_channels * hw..][..s.out_channels * hw];
                let col = &cols[n * rows * hw..][..rows * hw];
                // d_weight[o, r] += sum_p dy[o, p] * col[r, p]: col read transposed.
                sgemm(
                    s.out_channels,
                    hw,
                    rows,
                    dy,
                    (hw, 1),
                    col,
                    (1, hw),
                    partial,
                    true,
                );
            }
        });
    d_weight[..w_len].copy_from_slice(&partials[..w_len]);
    for partial in partials[w_len..chunks * w_len].chunks(w_len) {
        for (d, p) in d_weight.iter_mut().zip(partial) {
            *d += p;
        }
    }
    if let Some(d_bias) = d_bias {
        for (o, db) in d_bias.iter_mut().enumerate().take(s.out_channels) {
            *db = (0..s.batch)
                .map(|n| {
                    d_output[(n * s.out_channels + o) * hw..][..hw]
                        .iter()
                        .sum::<f32>()
                })
                .sum();
        }
    }
}

/// Input gradient: per sample, `dcols = weight^T * d_y`, then [`col2im`]. `scratch` holds
/// `batch * conv_col_len` floats (the forward columns' memory, once the weight gradient is done).
pub fn conv2d_backward_input(
    s: &Conv2dShape,
    d_output: &[f32],
    weight: &[f32],
    d_input: &mut [f32],
    scratch: &mut [f32],
) {
    let (rows, hw) = (conv_col_rows(s), s.out_height() * s.out_width());
    let in_len = s.in_channels * s.in_height * s.in_width;
    d_input[..s.input_len()]
        .par_chunks_mut(in_len)
        .zip(scratch[..s.batch * rows * hw].par_chunks_mut(rows * hw))
        .zip(d_output[..s.output_len()].par_chunks(s.out_channels * hw))
        .for_each(|((dx, dcol), dy)| {
            sgemm(
                rows,
                s.out_channels,
                hw,
                weight,
                (1, rows),
                dy,
                (hw, 1),
                dcol,
                false,
            );
            col2im(s, dcol, dx);
        });
}

// ---------------------------------------------------------------------------------------------
// Dense
// ---------------------------------------------------------------------------------------------

/// Rows of the batch handled by one parallel task.
fn row_block(batch: usize) -> usize {
    batch.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// `y[N, out] = x[N, in] * weight^T + bias`, in parallel blocks of rows.
pub fn dense_forward(
    s: &DenseShape,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    output: &mut [f32],
) {
    let block = row_block(s.batch);
    output[..s.batch * s.out_features]
        .par_chunks_mut(block * s.out_features)
        .zip(input[..s.batch * s.in_features].par_chunks(block * s.in_features))
        .for_each(|(y, x)| {
            let rows = y.len() / s.out_features;
            match bias {
                Some(b) => y
                    .chunks_mut(s.out_features)
                    .for_each(|row| row.copy_from_slice(b)),
                None => y.fill(0.0),
            }
            sgemm(
                rows,
                s.in_features,
                s.out_features,
                x,
                (s.in_features, 1),
                weight,
                (1, s.in_features),
                y,
                true,
            );
        });
}

/// `d_x[N, in] = d_y[N, out] * weight[out, in]`.
pub fn dense_backward_input(s: &DenseShape, d_output: &[f32], weight: &[f32], d_input: &mut [f32]) {
    let block = row_block(s.batch);
    d_input[..s.batch * s.in_features]
        .par_chunks_mut(block * s.in_features)
        .zip(d_output[..s.batch * s.out_features].par_chunks(block * s.out_features))
        .for_each(|(dx, dy)| {
            let rows = dx.len() / s.in_features;
            sgemm(
                rows,
                s.out_features,
                s.in_features,
                dy,
                (s.out_features, 1),
                weight,
                (s.in_features, 1),
                dx,
                false,
            );
        });
}

/// `d_weight[out, in] = d_y^T * x`, in parallel blocks of output rows; `d_bias` = column sums.
pub fn dense_backward_weight(
    s: &DenseShape,
    input: &[f32],
    d_output: &[f32],
    d_weight: &mut [f32],
    d_bias: Option<&mut [f32]>,
) {
    let block = s
        .out_features
        .div_ceil(rayon::current_num_threads().max(1))
        .max(1);
    d_weight[..s.out_features * s.in_features]
        .par_chunks_mut(block * s.in_features)
        .enumerate()
        .for_each(|(i, dw)| {
            let rows = dw.len() / s.in_features;
            let dy = &d_output[i * block..];
            sgemm(
                rows,
                s.batch,
                s.in_features,
                dy,
                (1, s.out_features),
                input,
                (s.in_features, 1),
                dw,
                false,
            );
        });
    if let Some(d_bias) = d_bias {
        for (o, db) in d_bias.iter_mut().enumerate().take(s.out_features) {
            *db = (0..s.batch).map(|n| d_output[n * s.out_features + o]).sum();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise layers and pooling, parallel over samples
// ---------------------------------------------------------------------------------------------

fn per_sample<F>(len: usize, batch: usize, input: &[f32], output: &mut [f32], f: F)
where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    output[..batch * len]
        .par_chunks_mut(len)
        .zip(input[..batch * len].par_chunks(len))
        .for_each(|(y, x)| f(x, y));
}

/// Max pooling forward, remembering for each output the input index (within its sample) of the
/// window's first maximum, the reference's rule, so that the backward pass is a scatter.
pub fn max_pool2d_forward(s: &Pool2dShape, input: &[f32], output: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow) = (s.out_height(), s.out_width());
    let (in_plane, out_plane) = (s.in_height * s.in_width, oh * ow);
    let (in_len, out_len) = (s.channels * in_plane, s.channels * out_plane);
    output[..s.output_len()]
        .par_chunks_mut(out_len)
        .zip(argmax[..s.output_len()].par_chunks_mut(out_len))
        .zip(input[..s.input_len()].par_chunks(in_len))
        .for_each(|((y, arg), x)| {
            for c in 0..s.channels {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let mut best = c * in_plane + oy * s.stride * s.in_width + ox * s.stride;
                        for wy in 0..s.window {
                            let row =
                                c * in_plane + (oy * s.stride + wy) * s.in_width + ox * s.stride;
                            for i in row..row + s.window {
                                if x[i] > x[best] {
                                    best = i;
                                }
                            }
                        }
                        let o = c * out_plane + oy * ow + ox;
                        y[o] = x[best];
                        arg[o] = best as u32;
                    }
                }
            }
        });
}

/// Max pooling backward: each output's gradient goes to the input its forward pass chose.
pub fn max_pool2d_backward(s: &Pool2dShape, argmax: &[u32], d_output: &[f32], d_input: &mut [f32]) {
    let one = Pool2dShape { batch: 1, ..*s };
    let (in_len, out_len) = (one.input_len(), one.output_len());
    d_input[..s.input_len()]
        .par_chunks_mut(in_len)
        .zip(argmax[..s.output_len()].par_chunks(out_len))
        .zip(d_output[..s.output_len()].par_chunks(out_len))
        .for_each(|((dx, arg), dy)| {
            dx.fill(0.0);
            for (&i, &g) in arg.iter().zip(dy) {
                dx[i as usize] += g;
            }
        });
}

pub fn avg_pool2d_forward(s: &Pool2dShape, input: &[f32], output: &mut [f32]) {
    let one = Pool2dShape { batch: 1, ..*s };
    per_sample_pair(
        one.input_len(),
        one.output_len(),
        s.batch,
        input,
        output,
        |x, y| r::avg_pool2d_forward(&one, x, y),
    );
}

pub fn avg_pool2d_backward(s: &Pool2dShape, d_output: &[f32], d_input: &mut [f32]) {
    let one = Pool2dShape { batch: 1, ..*s };
    per_sample_pair(
        one.output_len(),
        one.input_len(),
        s.batch,
        d_output,
        d_input,
        |dy, dx| r::avg_pool2d_backward(&one, dy, dx),
    );
}

/// `f(x_n, y_n)` for every sample, in parallel; `x` has `x_len` values a sample, `y` `y_len`.
fn per_sample_pair<F>(x_len: usize, y_len: usize, batch: usize, x: &[f32], y: &mut [f32], f: F)
where
    F: Fn(&[f32], &mut [f32]) + Sync,
{
    y[..batch * y_len]
        .par_chunks_mut(y_len)
        .zip(x[..batch * x_len].par_chunks(x_len))
        .for_each(|(y, x)| f(x, y));
}

/// Normalise the images `indices` of `data` into `x`, their labels into `labels`.
fn gather(
    data: &Dataset,
    indices: &[u32],
    norm: Normalization,
    x: &mut [f32],
    labels: &mut Vec<u8>,
) {
    labels.clear();
    labels.extend(indices.iter().map(|&i| data.labels[i as usize]));
    x[..indices.len() * IMAGE_PIXELS]
        .par_chunks_mut(IMAGE_PIXELS)
        .zip(indices.par_iter())
        .for_each(|(x, &i)| {
            for (v, &p) in x.iter_mut().zip(data.image(i as usize)) {
                *v = norm.apply(p);
            }
        });
}

/// The executor.
pub struct FastCpu {
    net: Network,
    params: Vec<Vec<f32>>,
    grads: Vec<Vec<f32>>,
    velocity: Vec<Vec<f32>>,
    train: Dataset,
    test: Dataset,
    norm: Normalization,
    seed: u64,
    order: Vec<u32>,
    metrics: Metrics,
    capacity: usize,
    /// `acts[0]` is the input batch, `acts[i + 1]` the output of layer `i`.
    acts: Vec<Vec<f32>>,
    /// Gradients of the same tensors (for the training batch).
    d_acts: Vec<Vec<f32>>,
    /// Per convolution layer: its im2col columns for the whole batch.
    cols: Vec<Vec<f32>>,
    /// Partial weight gradients of the chunked reduction (the largest conv's).
    partials: Vec<f32>,
    /// Per max-pool layer: the chosen input of every output.
    argmax: Vec<Vec<u32>>,
    labels: Vec<u8>,
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
        let mut cols = Vec::new();
        let mut argmax = Vec::new();
        let mut partial_len = 0;
        for l in &net.layers {
            acts.push(vec![0.0; capacity * l.output.len()]);
            d_acts.push(vec![0.0; capacity * l.output.len()]);
            if let Layer::Conv2d { .. } = l.layer {
                let s = l.conv_shape(capacity);
                cols.push(vec![0.0; capacity * conv_col_len(&s)]);
                partial_len = partial_len.max(REDUCE_CHUNKS * s.weight_len());
            } else {
                cols.push(Vec::new());
            }
            argmax.push(if matches!(l.layer, Layer::MaxPool2d { .. }) {
                vec![0; capacity * l.output.len()]
            } else {
                Vec::new()
            });
        }
        let grads = net.params.iter().map(|p| vec![0.0; p.len()]).collect();
        let velocity = net.params.iter().map(|p| vec![0.0; p.len()]).collect();
        FastCpu {
            net,
            params,
            grads,
            velocity,
            train,
            test,
            norm,
            seed,
            order: Vec::new(),
            metrics: Metrics::default(),
            capacity,
            acts,
            d_acts,
            cols,
            partials: vec![0.0; partial_len],
            argmax,
            labels: Vec::with_capacity(capacity),
        }
    }

    fn forward(&mut self, batch: usize, dropout: Option<u32>) {
        for (i, l) in self.net.layers.iter().enumerate() {
            let (before, after) = self.acts.split_at_mut(i + 1);
            let (x, y) = (
                &before[i][..batch * l.input.len()],
                &mut after[0][..batch * l.output.len()],
            );
            let bias = l.bias.map(|b| self.params[b].as_slice());
            match l.layer {
                Layer::Conv2d { .. } => conv2d_forward(
                    &l.conv_shape(batch),
                    x,
                    &self.params[l.weight.unwrap()],
                    bias,
                    y,
                    &mut self.cols[i],
                ),
                Layer::Dense { .. } => dense_forward(
                    &l.dense_shape(batch),
                    x,
                    &self.params[l.weight.unwrap()],
                    bias,
                    y,
                ),
                Layer::MaxPool2d { .. } => {
                    max_pool2d_forward(&l.pool_shape(batch), x, y, &mut self.argmax[i])
                }
                Layer::AvgPool2d { .. } => avg_pool2d_forward(&l.pool_shape(batch), x, y),
                Layer::Flatten => y.copy_from_slice(x),
                Layer::Relu => per_sample(l.output.len(), batch, x, y, r::relu_forward),
                Layer::Tanh => per_sample(l.output.len(), batch, x, y, r::tanh_forward),
                Layer::Sigmoid => per_sample(l.output.len(), batch, x, y, r::sigmoid_forward),
                Layer::Dropout { p } => match dropout {
                    Some(step) => dropout_apply(l, p, self.seed, step, batch, x, y),
                    None => y.copy_from_slice(x),
                },
            }
        }
    }

    fn backward(&mut self, batch: usize, step: u32) {
        for (i, l) in self.net.layers.iter().enumerate().rev() {
            let x = &self.acts[i][..batch * l.input.len()];
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
                    conv2d_backward_weight(
                        &s,
                        &self.cols[i],
                        d_y,
                        &mut lo[w],
                        d_bias,
                        &mut self.partials,
                    );
                    if !first {
                        conv2d_backward_input(&s, d_y, &self.params[w], d_x, &mut self.cols[i]);
                    }
                }
                Layer::Dense { .. } => {
                    let s = l.dense_shape(batch);
                    let (w, b) = (l.weight.unwrap(), l.bias);
                    let (lo, hi) = self.grads.split_at_mut(w + 1);
                    let d_bias = b.map(|b| &mut hi[b - w - 1][..]);
                    dense_backward_weight(&s, x, d_y, &mut lo[w], d_bias);
                    if !first {
                        dense_backward_input(&s, d_y, &self.params[w], d_x);
                    }
                }
                _ if first => {}
                Layer::MaxPool2d { .. } => {
                    max_pool2d_backward(&l.pool_shape(batch), &self.argmax[i], d_y, d_x)
                }
                Layer::AvgPool2d { .. } => avg_pool2d_backward(&l.pool_shape(batch), d_y, d_x),
                Layer::Flatten => d_x.copy_from_slice(d_y),
                Layer::Relu => elementwise_backward(l, batch, y, d_y, d_x, r::relu_backward),
                Layer::Tanh => elementwise_backward(l, batch, y, d_y, d_x, r::tanh_backward),
                Layer::Sigmoid => elementwise_backward(l, batch, y, d_y, d_x, r::sigmoid_backward),
                Layer::Dropout { p } => {
                    let seed = dropout_seed(self.seed, l.index);
                    let n = l.output.len();
                    d_x.par_chunks_mut(n)
                        .zip(d_y.par_chunks(n))
                        .enumerate()
                        .for_each(|(sample, (dx, dy))| {
                            let scale = 1.0 / (1.0 - p);
                            for (j, (dx, &dy)) in dx.iter_mut().zip(dy).enumerate() {
                                let keep = r::dropout_keep(p, seed, step, (sample * n + j) as u32);
                                *dx = if keep { dy * scale } else { 0.0 };
                            }
                        });
                }
            }
        }
    }
}

fn elementwise_backward(
    l: &ResolvedLayer,
    batch: usize,
    y: &[f32],
    d_y: &[f32],
    d_x: &mut [f32],
    f: fn(&[f32], &[f32], &mut [f32]),
) {
    let n = l.output.len();
    d_x[..batch * n]
        .par_chunks_mut(n)
        .zip(y.par_chunks(n))
        .zip(d_y.par_chunks(n))
        .for_each(|((dx, y), dy)| f(y, dy, dx));
}

/// Training-time dropout with the reference's mask, element indices counted over the batch.
fn dropout_apply(
    l: &ResolvedLayer,
    p: f32,
    seed: u64,
    step: u32,
    batch: usize,
    x: &[f32],
    y: &mut [f32],
) {
    let seed = dropout_seed(seed, l.index);
    let n = l.output.len();
    let scale = 1.0 / (1.0 - p);
    y[..batch * n]
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .for_each(|(sample, (y, x))| {
            for (j, (y, &x)) in y.iter_mut().zip(x).enumerate() {
                *y = if r::dropout_keep(p, seed, step, (sample * n + j) as u32) {
                    x * scale
                } else {
                    0.0
                };
            }
        });
}

impl Executor for FastCpu {
    fn device(&self) -> String {
        format!(
            "CPU (im2col + SGEMM, {} threads)",
            rayon::current_num_threads()
        )
    }

    fn network(&self) -> &Network {
        &self.net
    }

    fn set_parameters(&mut self, params: &[Vec<f32>]) -> Result<()> {
        anyhow::ensure!(
            params.len() == self.params.len(),
            "{} parameter tensors, expected {}",
            params.len(),
            self.params.len()
        );
        for ((info, p), mine) in self.net.params.iter().zip(params).zip(&mut self.params) {
            anyhow::ensure!(
                p.len() == info.len(),
                "parameter {}: {} values, expected {}",
                info.name,
                p.len(),
                info.len()
            );
            mine.copy_from_slice(p);
        }
        self.velocity.iter_mut().for_each(|v| v.fill(0.0));
        Ok(())
    }

    fn parameters(&mut self) -> Result<Vec<Vec<f32>>> {
        Ok(self.params.clone())
    }

    fn momentum(&mut self) -> Result<Vec<Vec<f32>>> {
        Ok(self.velocity.clone())
    }

    fn set_momentum(&mut self, momentum: &[Vec<f32>]) -> Result<()> {
        anyhow::ensure!(
            momentum.len() == self.velocity.len()
                && momentum
                    .iter()
                    .zip(&self.velocity)
                    .all(|(m, v)| m.len() == v.len()),
            "momentum buffers do not fit the network"
        );
        for (v, m) in self.velocity.iter_mut().zip(momentum) {
            v.copy_from_slice(m);
        }
        Ok(())
    }

    fn test_logits(&mut self) -> Result<Vec<f32>> {
        let classes = self.net.classes();
        let mut logits = Vec::with_capacity(self.test.len() * classes);
        let all: Vec<u32> = (0..self.test.len() as u32).collect();
        for chunk in all.chunks(self.capacity) {
            gather(
                &self.test,
                chunk,
                self.norm,
                &mut self.acts[0],
                &mut self.labels,
            );
            self.forward(chunk.len(), None);
            logits.extend_from_slice(&self.acts.last().unwrap()[..chunk.len() * classes]);
        }
        Ok(logits)
    }

    fn begin_epoch(&mut self, order: &[u32]) -> Result<()> {
        self.order.clear();
        self.order.extend_from_slice(order);
        Ok(())
    }

    fn train_step(&mut self, start: usize, len: usize, step: u32, sgd: Sgd) -> Result<()> {
        anyhow::ensure!(
            len >= 1 && len <= self.capacity,
            "a batch of {len}: this executor was built for up to {}",
            self.capacity
        );
        gather(
            &self.train,
            &self.order[start..start + len],
            self.norm,
            &mut self.acts[0],
            &mut self.labels,
        );
        self.forward(len, Some(step));
        let classes = self.net.classes();
        let logits = &self.acts.last().unwrap()[..len * classes];
        let loss = loss_forward(self.net.loss(), classes, logits, &self.labels);
        if !loss.is_finite() {
            return Err(Diverged { step, loss }.into());
        }
        let correct = r::count_correct(classes, logits, &self.labels);
        loss_backward_into(
            self.net.loss(),
            classes,
            logits,
            &self.labels,
            &mut self.d_acts.last_mut().unwrap()[..len * classes],
        );
        self.backward(len, step);
        let (lr, momentum) = (sgd.lr, sgd.momentum);
        self.params
            .par_iter_mut()
            .zip(self.grads.par_iter())
            .zip(self.velocity.par_iter_mut())
            .for_each(|((p, g), v)| {
                r::sgd_update(lr, momentum, p, g, v);
            });
        self.metrics.loss_sum += loss as f64 * len as f64;
        self.metrics.correct += correct as u64;
        self.metrics.count += len as u64;
        Ok(())
    }

    fn take_train_metrics(&mut self) -> Result<Metrics> {
        Ok(std::mem::take(&mut self.metrics))
    }

    fn evaluate(&mut self, split: Split) -> Result<Metrics> {
        let len = if split == Split::Train {
            self.train.len()
        } else {
            self.test.len()
        };
        let classes = self.net.classes();
        let mut metrics = Metrics::default();
        let all: Vec<u32> = (0..len as u32).collect();
        for chunk in all.chunks(self.capacity) {
            let data = if split == Split::Train {
                &self.train
            } else {
                &self.test
            };
            gather(data, chunk, self.norm, &mut self.acts[0], &mut self.labels);
            self.forward(chunk.len(), None);
            let logits = &self.acts.last().unwrap()[..chunk.len() * classes];
            metrics.loss_sum += loss_forward(self.net.loss(), classes, logits, &self.labels) as f64
                * chunk.len() as f64;
            metrics.correct += r::count_correct(classes, logits, &self.labels) as u64;
            metrics.count += chunk.len() as u64;
        }
        Ok(metrics)
    }
}
