//! The fast CPU executor's kernels: each op of [`crate::ops`] computed over a whole batch with
//! all cores, into buffers the executor allocates once. Same names as the reference functions
//! they are checked against (`tests/ops/`); the differences are the fusions the executor asks
//! for (a ReLU applied by the convolution before it, a ReLU mask folded into an input gradient).

use rayon::prelude::*;

use super::winograd::{self, madd, Grid};
use crate::data::{Dataset, Normalization, IMAGE_PIXELS, IMAGE_SIDE};
use crate::exec::{Optimizer, OptimizerKind};
use crate::network::{dropout_seed, ResolvedLayer};
use crate::ops::{self as r, BatchNormShape, Conv2dShape, DenseShape, Pool2dShape};

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
    let beta = if accumulate { 1.0 } else { 0.0 };
    // SAFETY: the asserts above keep every index of a, b (k > 0) and c = m x n row-major in bounds.
    unsafe {
        sgemm_raw(
            (m, k, n),
            a.as_ptr(),
            a_strides,
            b.as_ptr(),
            b_strides,
            beta,
            c.as_mut_ptr(),
            n,
        )
    }
}

/// The instruction set `matrixmultiply` chooses for [`sgemm`] on this CPU (its own run-time
/// choice, which `WGCNN_CPU_ISA` does not cap: build without the default feature
/// `avx512-sgemm` to keep it off AVX-512).
pub fn sgemm_isa() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if cfg!(feature = "avx512-sgemm") && is_x86_feature_detected!("avx512f") {
            return "AVX-512";
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return "AVX2";
        } else if is_x86_feature_detected!("avx") {
            return "AVX";
        }
    }
    "portable"
}

/// `matrixmultiply::sgemm` with `alpha = 1` and `c` row-major with row stride `ldc`.
///
/// # Safety
/// Every element of the m x k `a`, the k x n `b` (with their strides) and the m x n `c` must be
/// in bounds, and no one else may access `c` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn sgemm_raw(
    (m, k, n): (usize, usize, usize),
    a: *const f32,
    a_strides: (usize, usize),
    b: *const f32,
    b_strides: (usize, usize),
    beta: f32,
    c: *mut f32,
    ldc: usize,
) {
    let (a0, a1) = (a_strides.0 as isize, a_strides.1 as isize);
    let (b0, b1) = (b_strides.0 as isize, b_strides.1 as isize);
    // SAFETY: as the caller promises.
    unsafe { matrixmultiply::sgemm(m, k, n, 1.0, a, a0, a1, b, b0, b1, beta, c, ldc as isize, 1) }
}

/// How wide the column blocks of an `n`-column matrix are when parallel tasks split it by
/// columns: two blocks a core, whole cache lines wide.
fn column_block_width(n: usize) -> usize {
    n.div_ceil(2 * rayon::current_num_threads().max(1))
        .next_multiple_of(16)
}

// ---------------------------------------------------------------------------------------------
// Convolution
// ---------------------------------------------------------------------------------------------

/// Rows of one sample's im2col matrix: `in_channels * k * k`.
fn conv_col_rows(s: &Conv2dShape) -> usize {
    s.in_channels * s.kernel_size * s.kernel_size
}

/// Length of one sample's im2col matrix: `in_channels * k * k * out_h * out_w`.
fn conv_col_len(s: &Conv2dShape) -> usize {
    conv_col_rows(s) * s.out_height() * s.out_width()
}

/// The batch in [`REDUCE_CHUNKS`] contiguous chunks: `(samples per chunk, chunks)`.
fn chunking(batch: usize) -> (usize, usize) {
    let per = batch.div_ceil(REDUCE_CHUNKS).max(1);
    (per, batch.div_ceil(per))
}

/// Sum of `xs` in 16 interleaved partial sums (vectorisable, unlike a sequential f32 sum).
fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let blocks = xs.chunks_exact(16);
    let rest: f32 = blocks.remainder().iter().sum();
    for b in blocks {
        for (a, x) in acc.iter_mut().zip(b) {
            *a += x;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// `a · b` in 16 interleaved partial sums (vectorisable).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let (blocks_a, blocks_b) = (a.chunks_exact(16), b.chunks_exact(16));
    let rest: f32 = blocks_a
        .remainder()
        .iter()
        .zip(blocks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (a, b) in blocks_a.zip(blocks_b) {
        for ((s, x), y) in acc.iter_mut().zip(a).zip(b) {
            *s += x * y;
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Add the per-chunk partial sums (`chunks` consecutive slices of `len`) into the first, in chunk
/// order, so the total does not depend on how many threads computed them.
fn reduce_chunks(partials: &mut [f32], len: usize, chunks: usize) {
    let (total, rest) = partials.split_at_mut(len);
    for partial in rest.chunks(len).take(chunks - 1) {
        for (t, p) in total.iter_mut().zip(partial) {
            *t += p;
        }
    }
}

/// Memory one convolution layer needs through a training step, allocated once for batches of up
/// to the shape's `batch`. A 3x3 stride-1 layer is computed with Winograd's transforms
/// ([`crate::exec::fast::winograd`]); a stride-1 layer with few rows (a first layer on grey
/// images) directly ([`Direct`]); any other with im2col + SGEMM.
pub struct ConvWorkspace {
    shape: Conv2dShape,
    winograd: bool,
    direct: Option<Direct>,
    /// Per sample, kept from the forward pass for the weight gradient: the im2col matrix
    /// `[in * k * k][out_h * out_w]`, the Winograd input transform `V` `[16][in][tiles]`, or the
    /// padded input of [`Direct`]. The im2col and direct paths then reuse it for the input
    /// gradient's columns.
    cols: Aligned,
    /// Winograd-transformed filters: `U` of the forward pass and `U'` of the input gradient.
    u: Aligned,
    u_input_grad: Aligned,
    /// Per chunk of the batch: one sample's transforms and products (Winograd only), a whole
    /// number of cache lines each.
    scratch: Aligned,
    scratch_len: usize,
    /// Per chunk: the partial weight gradient (transformed for Winograd) followed by the bias's.
    partials: Vec<f32>,
}

impl ConvWorkspace {
    pub fn new(s: &Conv2dShape) -> Self {
        let (k, c) = (s.out_channels, s.in_channels);
        let winograd = winograd::applies(s);
        let direct =
            (!winograd && s.stride == 1 && conv_col_rows(s) < FEW_ROWS).then(|| Direct::new(s));
        let (cols, u_len, scratch_len, partial_len) = if let Some(d) = &direct {
            let cols = conv_col_len(s).max(d.input_len());
            let scratch = k * d.wide + direct_sums_len(k, d.off.len());
            (cols, 0, scratch, s.weight_len() + k)
        } else if winograd {
            let out = Grid::new(s.out_height(), s.out_width());
            let input = Grid::new(s.in_height, s.in_width);
            let (tp, tp2) = (out.padded(), input.padded());
            let weight_grad = W * out.len() * k + out.gradient_scratch(k);
            let products = (W * k * tp).max(W * (k + c) * tp2).max(weight_grad);
            let scratch = products + out.scratch().max(input.scratch());
            (W * c * tp, W * k * c, scratch, W * k * c + k)
        } else {
            // (A scratch of one float a chunk keeps the chunk loops uniform.)
            (conv_col_len(s), 0, 1, s.weight_len() + k)
        };
        let scratch_len = scratch_len.next_multiple_of(16);
        ConvWorkspace {
            shape: *s,
            winograd,
            direct,
            cols: Aligned::zeros(s.batch * cols),
            u: Aligned::zeros(u_len),
            u_input_grad: Aligned::zeros(u_len),
            scratch: Aligned::zeros(REDUCE_CHUNKS * scratch_len),
            scratch_len,
            partials: vec![0.0; REDUCE_CHUNKS * partial_len],
        }
    }

    fn check(&self, s: &Conv2dShape) {
        assert!(
            s.batch <= self.shape.batch
                && Conv2dShape {
                    batch: self.shape.batch,
                    ..*s
                } == self.shape,
            "convolution {s:?} does not fit the workspace built for {:?}",
            self.shape
        );
    }
}

/// Zeros whose first float starts a 64-byte cache line. The Winograd matrices' rows are whole
/// lines (16 floats), so with this each 16-float load of the products touches one line, not two
/// (a `Vec` of this size starts 16 bytes into a page here).
struct Aligned {
    buf: Vec<f32>,
    start: usize,
    len: usize,
}

impl Aligned {
    fn zeros(len: usize) -> Aligned {
        let buf = vec![0.0f32; len + 15];
        let start = buf.as_ptr().align_offset(64).min(15);
        Aligned { buf, start, len }
    }
}

impl std::ops::Deref for Aligned {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::DerefMut for Aligned {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// Points of a Winograd tile, the number of matrix products of each pass.
const W: usize = winograd::POINTS;

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

/// Stride-1 layers with fewer im2col rows than this (`in_channels * k * k`: a 3x3 first layer on
/// one channel has 9) are computed directly ([`Direct`]); SGEMM's blocks would be mostly empty.
const FEW_ROWS: usize = 16;

/// Pixels of a [`Direct`] block: two AVX2 vectors, one AVX-512 vector.
const DIRECT_BLOCK: usize = 16;

/// A stride-1 convolution with few rows computed straight from the padded input, no im2col
/// matrix. The output is computed "wide": output pixel `(y, x)` at `p = y * wp + x`, `wp` being
/// the padded input's width, so that its input for filter tap `r = (c, ky, kx)` is at
/// `p + off[r]` with `off[r] = (c * hp + ky) * wp + kx` for every pixel. Each tap is then one
/// shifted row of the padded input, times a weight, added to a row of outputs: a few
/// multiply-adds per load, in blocks of pixels that vectorise. The `k - 1` columns past the
/// output's width compute nothing useful and are dropped. Against im2col and a kernel over its
/// rows, this saves building the im2col matrix (9 floats kept per output here, 0.8 MB a step
/// for `two-conv`'s first layer at batch 32): `perf` put im2col at 2.2% of that network's step
/// and this path's padding, narrowing and widening at about 1.5%; the products cost the same.
#[derive(Debug, Clone)]
pub struct Direct {
    /// Padded input height and width.
    hp: usize,
    wp: usize,
    /// Wide outputs per channel, whole blocks: `((out_h - 1) * wp + out_w)` rounded up.
    wide: usize,
    /// `off[r]` for each im2col row `r`, in the reference's order (channel, ky, kx).
    off: Vec<usize>,
    /// Input channels, and the output's height and width.
    in_c: usize,
    oh: usize,
    ow: usize,
}

impl Direct {
    fn new(s: &Conv2dShape) -> Direct {
        let (hp, wp) = (s.in_height + 2 * s.padding, s.in_width + 2 * s.padding);
        let (oh, ow, k) = (s.out_height(), s.out_width(), s.kernel_size);
        let off = (0..s.in_channels)
            .flat_map(|c| (0..k).flat_map(move |ky| (0..k).map(move |kx| (c * hp + ky) * wp + kx)))
            .collect();
        Direct {
            hp,
            wp,
            wide: ((oh - 1) * wp + ow).next_multiple_of(DIRECT_BLOCK),
            off,
            in_c: s.in_channels,
            oh,
            ow,
        }
    }

    /// Floats of one padded input: the channels, then zeros for the last block's reach (its last
    /// tap reads up to `in * hp * wp + DIRECT_BLOCK - 1`: `wide <= (out_h - 1) * wp + out_w +
    /// DIRECT_BLOCK - 1` plus the largest offset is that).
    fn input_len(&self) -> usize {
        self.in_c * self.hp * self.wp + DIRECT_BLOCK
    }

    /// `y[o][oy][ox] = act(wide[o][oy * wp + ox] + bias[o])`: the wide output without its extra
    /// columns ([`direct_narrow`]).
    fn narrow(&self, wide: &[f32], bias: Option<&[f32]>, act: Epilogue, y: &mut [f32]) {
        direct_narrow(wide, (self.wide, self.wp), (self.oh, self.ow), bias, act, y);
    }

    /// The inverse of [`Direct::narrow`] for a gradient: `d_wide` = `d_y` laid out wide, zeros
    /// in the extra columns and past the end.
    fn widen(&self, d_y: &[f32], d_wide: &mut [f32]) {
        let ow = self.ow;
        d_wide.fill(0.0);
        for (dy, wide) in d_y
            .chunks_exact(self.oh * ow)
            .zip(d_wide.chunks_exact_mut(self.wide))
        {
            for (dy, wide) in dy.chunks_exact(ow).zip(wide.chunks_mut(self.wp)) {
                wide[..ow].copy_from_slice(dy);
            }
        }
    }

    /// `xp` = the sample `x` (`[in][h][w]`) with `pad` zeros around each plane, then zeros.
    fn pad(&self, s: &Conv2dShape, x: &[f32], xp: &mut [f32]) {
        let (h, w, pad) = (s.in_height, s.in_width, s.padding);
        xp.fill(0.0);
        for (plane, xp) in x
            .chunks_exact(h * w)
            .zip(xp.chunks_exact_mut(self.hp * self.wp))
        {
            for (row, xp) in plane
                .chunks_exact(w)
                .zip(xp.chunks_exact_mut(self.wp).skip(pad))
            {
                xp[pad..pad + w].copy_from_slice(row);
            }
        }
    }
}

crate::exec::fast::winograd::multiversion! {
/// `wide[o][p] = Σ_r weight[o][r] xp[p + off[r]]` for one sample's padded input `xp` ([`Direct`]):
/// four output channels at a time (then two, then one), a block of pixels of each in registers
/// over the taps.
pub fn direct_forward(off: &[usize], wide_len: usize, weight: &[f32], xp: &[f32], wide: &mut [f32]) {
    let rows = off.len();
    let mut o = 0;
    let out_c = weight.len() / rows;
    while o + 4 <= out_c {
        let w = &weight[o * rows..(o + 4) * rows];
        direct_block::<4, FMA>(off, wide_len, w, xp, &mut wide[o * wide_len..(o + 4) * wide_len]);
        o += 4;
    }
    if o + 2 <= out_c {
        let w = &weight[o * rows..(o + 2) * rows];
        direct_block::<2, FMA>(off, wide_len, w, xp, &mut wide[o * wide_len..(o + 2) * wide_len]);
        o += 2;
    }
    for o in o..out_c {
        let w = &weight[o * rows..(o + 1) * rows];
        direct_block::<1, FMA>(off, wide_len, w, xp, &mut wide[o * wide_len..(o + 1) * wide_len]);
    }
}
}

/// `O` output channels of [`direct_forward`].
#[inline(always)]
fn direct_block<const O: usize, const FMA: bool>(
    off: &[usize],
    wide_len: usize,
    weight: &[f32],
    xp: &[f32],
    wide: &mut [f32],
) {
    const B: usize = DIRECT_BLOCK;
    let rows = off.len();
    for p0 in (0..wide_len).step_by(B) {
        let mut acc = [[0.0f32; B]; O];
        for (r, &off) in off.iter().enumerate() {
            let xs: &[f32; B] = xp[p0 + off..p0 + off + B].try_into().unwrap();
            for (o, acc) in acc.iter_mut().enumerate() {
                let w = weight[o * rows + r];
                for (a, &x) in acc.iter_mut().zip(xs) {
                    *a = madd::<FMA>(w, x, *a);
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            wide[o * wide_len + p0..][..B].copy_from_slice(acc);
        }
    }
}

/// Floats of [`direct_weight_gradient`]'s running sums for `out_c` channels and `taps` taps.
pub fn direct_sums_len(out_c: usize, taps: usize) -> usize {
    out_c * (taps + 1) * SUM_LANES
}

/// Lanes of each running sum of [`direct_weight_gradient`]: an AVX-512 vector's.
const SUM_LANES: usize = 16;

/// Adds one sample's weight and bias gradient of a [`Direct`] layer into `sums`, lane by lane
/// ([`direct_sums_len`]: per channel `o`, a sum for each tap `r` of `d_wide[o][p] xp[p +
/// off[r]]` over the pixels `p`, then one of `d_wide[o][p]`, the bias's), `d_wide` being the
/// output gradient laid out wide (zero past the output's width). `direct_sums_finish` adds
/// the lanes up once a chunk of samples is done.
///
/// For the usual layer (one input channel, 3x3: nine taps) the sums stay in registers over a
/// sample, a block of channels at a time (three on AVX-512, one on AVX2: 27 or 9 sums, 30 or 10
/// with the biases'), each shifted input row loaded once for the block's channels. The dot
/// products before (kept for other tap counts) each waited on one chain of additions:
/// `sigmoid-bce`'s conv6k3 backward (`bench --profile`) went from 73 to 38 us a step.
pub fn direct_weight_gradient(
    off: &[usize],
    wide_len: usize,
    d_wide: &[f32],
    xp: &[f32],
    sums: &mut [f32],
) {
    let (taps, out_c) = (off.len(), d_wide.len() / wide_len);
    assert!(wide_len.is_multiple_of(SUM_LANES) && sums.len() >= direct_sums_len(out_c, taps));
    assert!(xp.len() >= wide_len + off.iter().max().copied().unwrap_or(0));
    if let Ok(off) = <&[usize; 9]>::try_from(off) {
        match winograd::Isa::detect() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `detect` found the features these functions are compiled for.
            winograd::Isa::Avx512 => unsafe {
                direct_gradient_avx512(off, wide_len, d_wide, xp, sums)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            winograd::Isa::Avx2Fma => unsafe {
                direct_gradient_avx2(off, wide_len, d_wide, xp, sums)
            },
            _ => direct_gradient::<Quad, 1>(off, wide_len, d_wide, xp, sums),
        }
        return;
    }
    for (o, d) in d_wide.chunks_exact(wide_len).enumerate() {
        let sums = &mut sums[o * (taps + 1) * SUM_LANES..];
        for (r, &off) in off.iter().enumerate() {
            sums[r * SUM_LANES] += dot(d, &xp[off..off + wide_len]);
        }
        sums[taps * SUM_LANES] += sum(d);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn direct_gradient_avx512(
    off: &[usize; 9],
    wide_len: usize,
    d_wide: &[f32],
    xp: &[f32],
    sums: &mut [f32],
) {
    direct_gradient::<std::arch::x86_64::__m512, 3>(off, wide_len, d_wide, xp, sums)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn direct_gradient_avx2(
    off: &[usize; 9],
    wide_len: usize,
    d_wide: &[f32],
    xp: &[f32],
    sums: &mut [f32],
) {
    direct_gradient::<std::arch::x86_64::__m256, 1>(off, wide_len, d_wide, xp, sums)
}

/// [`direct_weight_gradient`] for nine taps with vectors `V`, `O` channels at a time.
#[inline(always)]
fn direct_gradient<V: Vector, const O: usize>(
    off: &[usize; 9],
    wide_len: usize,
    d_wide: &[f32],
    xp: &[f32],
    sums: &mut [f32],
) {
    let out_c = d_wide.len() / wide_len;
    let mut o = 0;
    while o + O <= out_c {
        direct_gradient_block::<V, O>(off, wide_len, d_wide, xp, sums, o);
        o += O;
    }
    while o < out_c {
        direct_gradient_block::<V, 1>(off, wide_len, d_wide, xp, sums, o);
        o += 1;
    }
}

/// Channels `o0..o0 + O` of [`direct_gradient`].
#[inline(always)]
fn direct_gradient_block<V: Vector, const O: usize>(
    off: &[usize; 9],
    wide_len: usize,
    d_wide: &[f32],
    xp: &[f32],
    sums: &mut [f32],
    o0: usize,
) {
    assert!((o0 + O) * wide_len <= d_wide.len() && sums.len() >= (o0 + O) * 10 * SUM_LANES);
    // SAFETY: pixels p < wide_len (a whole number of vectors) of channels o0..o0 + O of d_wide,
    // xp read up to wide_len + the largest offset (asserted in `direct_weight_gradient`), and
    // the sums of those channels (asserted here), the CPU having `V`'s instruction set.
    unsafe {
        let mut acc = [[V::zero(); 9]; O];
        let mut bias = [V::zero(); O];
        let (d_wide, xp) = (d_wide.as_ptr().add(o0 * wide_len), xp.as_ptr());
        for p in (0..wide_len).step_by(V::LANES) {
            let d: [V; O] = std::array::from_fn(|o| V::load(d_wide.add(o * wide_len + p)));
            for (b, &d) in bias.iter_mut().zip(&d) {
                *b = b.add(d);
            }
            for (r, &off) in off.iter().enumerate() {
                let x = V::load(xp.add(p + off));
                for (acc, &d) in acc.iter_mut().zip(&d) {
                    acc[r] = acc[r].madd(d, x);
                }
            }
        }
        for (o, (acc, &b)) in acc.iter().zip(&bias).enumerate() {
            let at = sums.as_mut_ptr().add((o0 + o) * 10 * SUM_LANES);
            for (r, &v) in acc.iter().chain([&b]).enumerate() {
                let at = at.add(r * SUM_LANES);
                V::load(at).add(v).store(at);
            }
        }
    }
}

/// `dw[o][r] = Σ` of the lanes of [`direct_weight_gradient`]'s sums, and `db[o]` of the biases'.
fn direct_sums_finish(out_c: usize, taps: usize, sums: &[f32], dw: &mut [f32], db: &mut [f32]) {
    let each = sums.chunks_exact((taps + 1) * SUM_LANES).take(out_c);
    for ((sums, dw), db) in each.zip(dw.chunks_exact_mut(taps)).zip(db) {
        let mut lanes = sums.chunks_exact(SUM_LANES).map(|l| l.iter().sum::<f32>());
        for dw in dw {
            *dw = lanes.next().unwrap();
        }
        *db = lanes.next().unwrap();
    }
}

/// Forward pass. Keeps what the weight gradient needs (im2col columns or Winograd `V`) in `ws`.
/// - im2col: per sample, `y[out, HW] = weight[out, K] * im2col(x)[K, HW] + bias`.
/// - Winograd: per sample, `V = transform(x)`, `M[p] = U[p] * V[p]` for the 16 points, `y = Aᵀ M A + bias`.
///
/// With an activation in `act`, each sample's output is passed through it while it is in cache (a
/// fused `conv -> relu`, `conv -> tanh` or `conv -> sigmoid`).
pub fn conv2d_forward(
    s: &Conv2dShape,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Epilogue,
    output: &mut [f32],
    ws: &mut ConvWorkspace,
) {
    ws.check(s);
    let (c, k) = (s.in_channels, s.out_channels);
    let (oh, ow) = (s.out_height(), s.out_width());
    let (in_len, out_len) = (c * s.in_height * s.in_width, k * oh * ow);
    let (per, _) = chunking(s.batch);
    if let Some(d) = &ws.direct {
        let col_len = ws.cols.len() / ws.shape.batch;
        ws.scratch
            .par_chunks_mut(ws.scratch_len)
            .zip(ws.cols[..s.batch * col_len].par_chunks_mut(per * col_len))
            .zip(output[..s.output_len()].par_chunks_mut(per * out_len))
            .zip(input[..s.input_len()].par_chunks(per * in_len))
            .for_each(|(((wide, xps), ys), xs)| {
                let each = xps.chunks_mut(col_len).zip(ys.chunks_mut(out_len));
                for ((xp, y), x) in each.zip(xs.chunks(in_len)) {
                    let xp = &mut xp[..d.input_len()];
                    d.pad(s, x, xp);
                    direct_forward(&d.off, d.wide, weight, xp, wide);
                    d.narrow(wide, bias, act, y);
                }
            });
        return;
    }
    if !ws.winograd {
        let (rows, hw) = (conv_col_rows(s), oh * ow);
        output[..s.output_len()]
            .par_chunks_mut(out_len)
            .zip(ws.cols[..s.batch * rows * hw].par_chunks_mut(rows * hw))
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
                sgemm(k, rows, hw, weight, (rows, 1), col, (hw, 1), y, true);
                act.apply(y);
            });
        return;
    }
    let tiles = Grid::new(oh, ow);
    let tp = tiles.padded();
    let v_len = W * c * tp;
    winograd::transform_weights(k, c, weight, false, &mut ws.u);
    let u = &ws.u;
    ws.scratch
        .par_chunks_mut(ws.scratch_len)
        .zip(ws.cols[..s.batch * v_len].par_chunks_mut(per * v_len))
        .zip(output[..s.output_len()].par_chunks_mut(per * out_len))
        .zip(input[..s.input_len()].par_chunks(per * in_len))
        .for_each(|(((scratch, vs), ys), xs)| {
            let (m, rows) = scratch.split_at_mut(W * k * tp);
            for ((v, y), x) in vs
                .chunks_mut(v_len)
                .zip(ys.chunks_mut(out_len))
                .zip(xs.chunks(in_len))
            {
                winograd::input_transform(
                    c,
                    (s.in_height, s.in_width),
                    s.padding,
                    tiles,
                    x,
                    v,
                    rows,
                );
                for p in 0..W {
                    let (u, v, m) = (&u[p * k * c..], &v[p * c * tp..], &mut m[p * k * tp..]);
                    winograd::gemm(k, c, tp, u, c, v, tp, m, tp, false);
                }
                winograd::output_transform(k, (oh, ow), tiles, m, bias, y, rows);
                act.apply(y);
            }
        });
}

/// Weight (and bias) gradient from what the forward pass kept in `ws`, summed over the batch in
/// `REDUCE_CHUNKS` chunks (in parallel), then over the chunks in order.
/// - im2col: `d_weight += d_y_n * cols_n^T` per sample.
/// - Winograd: `M[p] (in x out) += V_n[p] (in x tiles) * Ĝ_n[p] (tiles x out)` per sample, with
///   `Ĝ_n` the transformed output gradient; then `d_weight = A₂ᵀ M A₂` once.
pub fn conv2d_backward_weight(
    s: &Conv2dShape,
    d_output: &[f32],
    d_weight: &mut [f32],
    d_bias: Option<&mut [f32]>,
    ws: &mut ConvWorkspace,
) {
    ws.check(s);
    let (c, k) = (s.in_channels, s.out_channels);
    let (oh, ow) = (s.out_height(), s.out_width());
    let (hw, out_len) = (oh * ow, k * oh * ow);
    let (per, chunks) = chunking(s.batch);
    let tiles = Grid::new(oh, ow);
    let (t_n, tp) = (tiles.len(), tiles.padded());
    let (w_len, col_len) = if ws.winograd {
        (W * k * c, W * c * tp)
    } else {
        (s.weight_len(), ws.cols.len() / ws.shape.batch)
    };
    let (winograd, direct, cols) = (ws.winograd, &ws.direct, &ws.cols);
    ws.partials
        .par_chunks_mut(w_len + k)
        .zip(ws.scratch.par_chunks_mut(ws.scratch_len))
        .take(chunks)
        .enumerate()
        .for_each(|(chunk, (partial, scratch))| {
            partial.fill(0.0);
            let (dw, db) = partial.split_at_mut(w_len);
            if let Some(d) = direct {
                scratch[k * d.wide..][..direct_sums_len(k, d.off.len())].fill(0.0);
            }
            for n in chunk * per..((chunk + 1) * per).min(s.batch) {
                let dy = &d_output[n * out_len..][..out_len];
                let col = &cols[n * col_len..][..col_len];
                if winograd {
                    let (g, rest) = scratch.split_at_mut(W * t_n * k);
                    winograd::gradient_transform(k, (oh, ow), tiles, dy, g, rest);
                    for p in 0..W {
                        // M[p][i][o] += sum_t v[p][i][t] * g[p][t][o].
                        let (v, g) = (&col[p * c * tp..], &g[p * t_n * k..]);
                        winograd::gemm(c, t_n, k, v, tp, g, k, &mut dw[p * c * k..], k, true);
                    }
                } else {
                    // d_weight[o, r] += sum_p dy[o, p] * col[r, p].
                    if let Some(d) = direct {
                        let (d_wide, sums) = scratch.split_at_mut(k * d.wide);
                        d.widen(dy, d_wide);
                        direct_weight_gradient(&d.off, d.wide, d_wide, &col[..d.input_len()], sums);
                        continue; // the bias's gradient too
                    } else {
                        let rows = conv_col_rows(s);
                        sgemm(k, hw, rows, dy, (hw, 1), col, (1, hw), dw, true);
                    }
                }
                for (o, b) in db.iter_mut().enumerate() {
                    *b += sum(&dy[o * hw..][..hw]);
                }
            }
            if let Some(d) = direct {
                direct_sums_finish(k, d.off.len(), &scratch[k * d.wide..], dw, db);
            }
        });
    reduce_chunks(&mut ws.partials, w_len + k, chunks);
    if winograd {
        winograd::weight_gradient_transform(k, c, &ws.partials[..w_len], d_weight);
    } else {
        d_weight[..w_len].copy_from_slice(&ws.partials[..w_len]);
    }
    if let Some(d_bias) = d_bias {
        d_bias[..k].copy_from_slice(&ws.partials[w_len..w_len + k]);
    }
}

/// Input gradient; call after [`conv2d_backward_weight`] (the im2col path reuses the columns).
/// - im2col: per sample, `dcols = weight^T * d_y`, then `col2im`.
/// - Winograd: the forward algorithm on `d_y` padded by `2 - padding`, with the filters rotated
///   180° and their channel axes swapped.
///
/// With `before` (the activation before this layer and its output, which is this layer's input),
/// each sample's gradient is passed back through that activation too while it is in cache
/// ([`Before`]: a fused `relu -> conv`, `tanh -> conv` or `sigmoid -> conv` backward).
pub fn conv2d_backward_input(
    s: &Conv2dShape,
    d_output: &[f32],
    weight: &[f32],
    before: Option<Before>,
    d_input: &mut [f32],
    ws: &mut ConvWorkspace,
) {
    ws.check(s);
    let (c, k) = (s.in_channels, s.out_channels);
    let (oh, ow) = (s.out_height(), s.out_width());
    let (in_len, out_len) = (c * s.in_height * s.in_width, k * oh * ow);
    if !ws.winograd {
        let (rows, hw) = (conv_col_rows(s), oh * ow);
        d_input[..s.input_len()]
            .par_chunks_mut(in_len)
            .zip(ws.cols[..s.batch * rows * hw].par_chunks_mut(rows * hw))
            .zip(d_output[..s.output_len()].par_chunks(out_len))
            .enumerate()
            .for_each(|(n, ((dx, dcol), dy))| {
                sgemm(rows, k, hw, weight, (1, rows), dy, (hw, 1), dcol, false);
                col2im(s, dcol, dx);
                if let Some(before) = &before {
                    before_backward_in_place(before, n * in_len, dx);
                }
            });
        return;
    }
    let (per, _) = chunking(s.batch);
    let tiles = Grid::new(s.in_height, s.in_width);
    let tp = tiles.padded();
    winograd::transform_weights(k, c, weight, true, &mut ws.u_input_grad);
    let u = &ws.u_input_grad;
    ws.scratch
        .par_chunks_mut(ws.scratch_len)
        .zip(d_input[..s.input_len()].par_chunks_mut(per * in_len))
        .zip(d_output[..s.output_len()].par_chunks(per * out_len))
        .enumerate()
        .for_each(|(chunk, ((scratch, dxs), dys))| {
            let (v, rest) = scratch.split_at_mut(W * k * tp);
            let (m, rows) = rest.split_at_mut(W * c * tp);
            for (j, (dx, dy)) in dxs.chunks_mut(in_len).zip(dys.chunks(out_len)).enumerate() {
                winograd::input_transform(k, (oh, ow), 2 - s.padding, tiles, dy, v, rows);
                for p in 0..W {
                    let (u, v, m) = (&u[p * c * k..], &v[p * k * tp..], &mut m[p * c * tp..]);
                    winograd::gemm(c, k, tp, u, k, v, tp, m, tp, false);
                }
                winograd::output_transform(c, (s.in_height, s.in_width), tiles, m, None, dx, rows);
                if let Some(before) = &before {
                    before_backward_in_place(before, (chunk * per + j) * in_len, dx);
                }
            }
        });
}

// ---------------------------------------------------------------------------------------------
// Dense
// ---------------------------------------------------------------------------------------------

/// Rows of the batch handled by one parallel task.
fn row_block(batch: usize) -> usize {
    batch.div_ceil(rayon::current_num_threads().max(1)).max(1)
}

/// Scratch floats [`dense_forward`] needs: the input transposed and, for each block of its
/// columns, a partial output, transposed.
pub fn dense_scratch_len(s: &DenseShape) -> usize {
    s.batch * (s.in_features + s.out_features * REDUCE_CHUNKS)
}

/// Layers with at most this many outputs (the classifiers) take the narrow kernels: one dot
/// product per output, the weight rows read from cache; the matrix products below need their
/// operands transposed or packed, which cost more than the work there (`dropout`'s 10816 -> 10
/// at batch 32: 474 us forward, 531 us backward).
const NARROW: usize = 16;

crate::exec::fast::winograd::multiversion! {
/// `y[n][o] = x[n] · weight[o] + bias[o]` for the rows of `x` (each `fin` long). Four rows at a
/// time, each in 16 interleaved partial sums as [`dot`] (with fused multiply-adds where the CPU
/// has them): each weight is loaded once for four products, so the weights (hundreds of KB in
/// these layers) are streamed once per four samples. `two-conv`'s 18432 -> 10 at batch 32 on 2
/// threads here: 352-364 us one row at a time, 226-269 us four at a time. The rest of the rows
/// (fewer than four) one at a time.
pub fn dense_narrow_forward(
    fin: usize,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let fout = weight.len() / fin;
    let whole = fin - fin % 16;
    let b = |o: usize| bias.map_or(0.0, |b| b[o]);
    let mut xs = x.chunks_exact(4 * fin);
    let mut ys = y.chunks_exact_mut(4 * fout);
    for (x, y) in (&mut xs).zip(&mut ys) {
        let (x0, rest) = x.split_at(fin);
        let (x1, rest) = rest.split_at(fin);
        let (x2, x3) = rest.split_at(fin);
        let xs = [x0, x1, x2, x3];
        let mut o = 0;
        // Two outputs at a time where there are registers for their eight partial sums
        // (AVX-512): eight independent chains of multiply-adds, where four leave the FMA units
        // waiting on their latency, and each row of `x` loaded once for two outputs.
        while WIDE && o + 2 <= fout {
            let w = [&weight[o * fin..][..fin], &weight[(o + 1) * fin..][..fin]];
            let acc = narrow_forward_block::<2, FMA>(whole, xs, w);
            for (k, acc) in acc.iter().enumerate() {
                narrow_forward_finish(whole, xs, w[k], acc, b(o + k), &mut y[o + k..], fout);
            }
            o += 2;
        }
        while o < fout {
            let w = [&weight[o * fin..][..fin]];
            let acc = narrow_forward_block::<1, FMA>(whole, xs, w);
            narrow_forward_finish(whole, xs, w[0], &acc[0], b(o), &mut y[o..], fout);
            o += 1;
        }
    }
    let rest = xs.remainder().chunks_exact(fin);
    for (x, y) in rest.zip(ys.into_remainder().chunks_exact_mut(fout)) {
        for (o, (y, w)) in y.iter_mut().zip(weight.chunks_exact(fin)).enumerate() {
            *y = dot(x, w) + b(o);
        }
    }
}
}

/// The partial sums (16 lanes) of four rows of `x` with each of the `O` (1 or 2) weight rows
/// `w`, over the first `whole` inputs (by iterators, which leave no bounds checks in the loop).
#[inline(always)]
fn narrow_forward_block<const O: usize, const FMA: bool>(
    whole: usize,
    x: [&[f32]; 4],
    w: [&[f32]; O],
) -> [[[f32; 16]; 4]; O] {
    let mut acc = [[[0.0f32; 16]; 4]; O];
    let rows = x[0][..whole].chunks_exact(16).zip(x[1].chunks_exact(16));
    let rows = rows.zip(x[2].chunks_exact(16)).zip(x[3].chunks_exact(16));
    let w0 = w[0][..whole].chunks_exact(16);
    let w1 = w[O - 1][..whole].chunks_exact(16); // the same row when O = 1 (then unused)
    for ((w0, w1), (((p0, p1), p2), p3)) in w0.zip(w1).zip(rows) {
        for (k, w) in [w0, w1].into_iter().take(O).enumerate() {
            for i in 0..16 {
                acc[k][0][i] = madd::<FMA>(p0[i], w[i], acc[k][0][i]);
                acc[k][1][i] = madd::<FMA>(p1[i], w[i], acc[k][1][i]);
                acc[k][2][i] = madd::<FMA>(p2[i], w[i], acc[k][2][i]);
                acc[k][3][i] = madd::<FMA>(p3[i], w[i], acc[k][3][i]);
            }
        }
    }
    acc
}

/// `y[r * fout] = Σ acc[r] + (the inputs past `whole`) + bias` for the four rows.
#[inline(always)]
fn narrow_forward_finish(
    whole: usize,
    x: [&[f32]; 4],
    w: &[f32],
    acc: &[[f32; 16]; 4],
    bias: f32,
    y: &mut [f32],
    fout: usize,
) {
    for (r, (acc, x)) in acc.iter().zip(x).enumerate() {
        let rest: f32 = x[whole..].iter().zip(&w[whole..]).map(|(x, w)| x * w).sum();
        y[r * fout] = acc.iter().sum::<f32>() + rest + bias;
    }
}

crate::exec::fast::winograd::multiversion! {
/// `d_x[n] = Σ_o d_y[n][o] weight[o]` (summed over o in order from zero, as the reference) for
/// the rows of `d_y`: four rows at a time, 16 inputs of each in registers over every output and
/// then stored once, so each weight is loaded once per four rows (18432 -> 10 at batch 32 on 2
/// threads: 372 us one row at a time, 310 us four); the rest of the rows one at a time. With
/// `before` (`d_x` being elements `from..` of the batch's gradient), each four rows are then
/// passed back through the layers before while they are in cache ([`Before`]).
pub fn dense_narrow_backward_input(
    fin: usize,
    d_y: &[f32],
    weight: &[f32],
    before: Option<Before>,
    from: usize,
    d_x: &mut [f32],
) {
    const LANES: usize = 16;
    let fout = weight.len() / fin;
    let whole = fin - fin % LANES;
    let mut dys = d_y.chunks_exact(4 * fout);
    let mut dxs = d_x.chunks_exact_mut(4 * fin);
    let mut row = 0;
    for (dy, dx) in (&mut dys).zip(&mut dxs) {
        let (x0, rest) = dx.split_at_mut(fin);
        let (x1, rest) = rest.split_at_mut(fin);
        let (x2, x3) = rest.split_at_mut(fin);
        let rows = x0[..whole].chunks_exact_mut(LANES).zip(x1.chunks_exact_mut(LANES));
        let rows = rows.zip(x2.chunks_exact_mut(LANES)).zip(x3.chunks_exact_mut(LANES));
        for (j0, (((q0, q1), q2), q3)) in (0..whole).step_by(LANES).zip(rows) {
            let mut acc = [[0.0f32; LANES]; 4];
            for (o, w) in weight.chunks_exact(fin).enumerate() {
                let w = &w[j0..j0 + LANES];
                let g = [dy[o], dy[fout + o], dy[2 * fout + o], dy[3 * fout + o]];
                for i in 0..LANES {
                    acc[0][i] = madd::<FMA>(g[0], w[i], acc[0][i]);
                    acc[1][i] = madd::<FMA>(g[1], w[i], acc[1][i]);
                    acc[2][i] = madd::<FMA>(g[2], w[i], acc[2][i]);
                    acc[3][i] = madd::<FMA>(g[3], w[i], acc[3][i]);
                }
            }
            for (q, acc) in [q0, q1, q2, q3].into_iter().zip(&acc) {
                q.copy_from_slice(acc);
            }
        }
        for (dy, dx) in dy.chunks_exact(fout).zip(dx.chunks_exact_mut(fin)) {
            narrow_input_tail(whole, dy, weight, dx);
        }
        if let Some(before) = &before {
            // While these four rows are in L2.
            before.apply(from + row * fin, dx);
        }
        row += 4;
    }
    let rest = dys.remainder().chunks_exact(fout);
    for (dy, dx) in rest.zip(dxs.into_remainder().chunks_exact_mut(fin)) {
        for j0 in (0..whole).step_by(LANES) {
            let mut acc = [0.0f32; LANES];
            for (&g, w) in dy.iter().zip(weight.chunks_exact(fin)) {
                for (a, &w) in acc.iter_mut().zip(&w[j0..j0 + LANES]) {
                    *a = madd::<FMA>(g, w, *a);
                }
            }
            dx[j0..j0 + LANES].copy_from_slice(&acc);
        }
        narrow_input_tail(whole, dy, weight, dx);
        if let Some(before) = &before {
            before.apply(from + row * fin, dx);
        }
        row += 1;
    }
}
}

/// The inputs from `from` on of one row of [`dense_narrow_backward_input`], one at a time.
#[inline(always)]
fn narrow_input_tail(from: usize, dy: &[f32], weight: &[f32], dx: &mut [f32]) {
    let fin = dx.len();
    for (j, d) in dx.iter_mut().enumerate().skip(from) {
        *d = dy
            .iter()
            .zip(weight.chunks_exact(fin))
            .fold(0.0, |a, (&g, w)| a + g * w[j]);
    }
}

/// Columns `j0..j0 + cols` of every row of a row-major matrix (row stride `ld`): one of the
/// disjoint column blocks [`par_column_blocks`] hands its tasks, each to write its own.
pub struct Columns<'a> {
    ptr: *mut f32,
    ld: usize,
    rows: usize,
    cols: usize,
    _matrix: std::marker::PhantomData<&'a mut [f32]>,
}

impl Columns<'_> {
    /// How many columns the block has.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Row `r` of the block.
    pub fn row(&mut self, r: usize) -> &mut [f32] {
        assert!(r < self.rows, "row {r} of a {}-row matrix", self.rows);
        // SAFETY: `par_column_blocks` made `ptr` point at column j0 of a matrix with `rows` rows
        // of `ld >= j0 + cols` floats, borrowed mutably for 'a, and gave columns j0..j0 + cols to
        // this block alone; the slice borrows `self` mutably, so no two of its rows are alive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(r * self.ld), self.cols) }
    }
}

/// Runs `f(j0, block)` in parallel on blocks of `width` columns (the last may be narrower) of the
/// `rows x ld` row-major `matrix`, for tasks that write whole columns (a matrix split by rows
/// would give each task contiguous memory, but then each must read all of an input that only
/// the columns need).
pub fn par_column_blocks<F>(matrix: &mut [f32], rows: usize, ld: usize, width: usize, f: F)
where
    F: Fn(usize, Columns<'_>) + Sync,
{
    assert!(
        matrix.len() >= rows * ld && width > 0,
        "par_column_blocks: matrix too short"
    );
    // The tasks' blocks are disjoint columns; `matrix` stays borrowed until they end.
    let base = Shared(matrix.as_mut_ptr());
    (0..ld.div_ceil(width)).into_par_iter().for_each(|b| {
        let j0 = b * width;
        let block = Columns {
            ptr: base.at(j0),
            ld,
            rows,
            cols: width.min(ld - j0),
            _matrix: std::marker::PhantomData,
        };
        f(j0, block)
    });
}

crate::exec::fast::winograd::multiversion! {
/// `d_w[o][j0 + j] = Σ_n d_y[n][o] x[n][j0 + j]` (summed over the batch in order, as the
/// reference) for the columns of this block of `d_w`: 16 columns of four (then one) outputs in
/// registers over the whole batch, so each input is loaded once per four outputs and each
/// weight gradient stored once. Split by columns, the cores read the batch `x` (2.3 MB in
/// `two-conv`'s 18432 -> 10) once in all; split by output rows (the kernel before this one),
/// each core read all of it once per row.
pub fn dense_narrow_backward_weight(fin: usize, fout: usize, j0: usize, x: &[f32], d_y: &[f32], d_w: &mut Columns<'_>) {
    const LANES: usize = 16;
    let batch = x.len() / fin;
    let cols = d_w.cols();
    assert!(j0 + cols <= fin && d_y.len() >= batch * fout);
    let whole = cols - cols % LANES;
    for j in (0..whole).step_by(LANES) {
        let mut o = 0;
        while o + 4 <= fout {
            narrow_weight_block::<4, FMA>(fin, fout, o, j0 + j, x, d_y, d_w, j);
            o += 4;
        }
        while o < fout {
            narrow_weight_block::<1, FMA>(fin, fout, o, j0 + j, x, d_y, d_w, j);
            o += 1;
        }
    }
    for o in 0..fout {
        let row = d_w.row(o);
        for (j, d) in row.iter_mut().enumerate().skip(whole) {
            *d = (0..batch).fold(0.0, |a, n| a + d_y[n * fout + o] * x[n * fin + j0 + j]);
        }
    }
}
}

/// Outputs `o..o + R`, columns `col..col + 16` of `x` (`at..at + 16` of the block `d_w`).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn narrow_weight_block<const R: usize, const FMA: bool>(
    fin: usize,
    fout: usize,
    o: usize,
    col: usize,
    x: &[f32],
    d_y: &[f32],
    d_w: &mut Columns<'_>,
    at: usize,
) {
    let mut acc = [[0.0f32; 16]; R];
    for (xn, dy) in x.chunks_exact(fin).zip(d_y.chunks_exact(fout)) {
        let xs: &[f32; 16] = xn[col..col + 16].try_into().unwrap();
        let g: &[f32; R] = dy[o..o + R].try_into().unwrap();
        for (acc, &g) in acc.iter_mut().zip(g) {
            for (a, &v) in acc.iter_mut().zip(xs) {
                *a = madd::<FMA>(g, v, *a);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        d_w.row(o + r)[at..at + 16].copy_from_slice(acc);
    }
}

/// `y[N, out] = x[N, in] * weight^T + bias`, as `y^T = weight * x^T` so that [`winograd::gemm`]
/// reads both operands row-major (no packing): a task for each block of `x`'s columns (a fixed
/// number of them) transposes its block into `scratch` and multiplies all outputs' weights over
/// those inputs (in slices of the inner dimension that stay in cache) into its own partial
/// `y^T`; the partials are summed in order and transposed back, each row then passed through
/// `act` (a fused `dense -> tanh`, etc.). Split by inputs rather than outputs, each thread reads
/// the weights its own core stepped in the backward pass: `sigmoid-bce`'s dense100 forward went
/// from 141-146 to 119-128 us a step (`bench --profile`), `default`'s dense128 from 994-1127 to
/// 769-788 us.
pub fn dense_forward(
    s: &DenseShape,
    input: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    act: Epilogue,
    output: &mut [f32],
    scratch: &mut [f32],
) {
    const SLICE: usize = 1024; // inner dimension per pass: SLICE x N floats of x^T stay in L2
    let (n, fin, fout) = (s.batch, s.in_features, s.out_features);
    if fout <= NARROW {
        let block = row_block(n);
        output[..n * fout]
            .par_chunks_mut(block * fout)
            .zip(input[..n * fin].par_chunks(block * fin))
            .for_each(|(y, x)| {
                dense_narrow_forward(fin, x, &weight[..fout * fin], bias, y);
                act.apply(y);
            });
        return;
    }
    // The inputs in at most `REDUCE_CHUNKS` blocks of columns, whatever the number of threads
    // (so that the sums, and the results, do not depend on it), a task each: its block of the
    // input transposed, and its product with all outputs' weights into its own partial `y^T`.
    // The tasks go to the threads in order, as `dense_backward`'s blocks of columns do, so that
    // each thread reads the weights its own core stepped last.
    let block = fin.div_ceil(REDUCE_CHUNKS);
    let parts = fin.div_ceil(block);
    let (xt, rest) = scratch.split_at_mut(n * fin);
    let yts = &mut rest[..parts * fout * n];
    xt.par_chunks_mut(block * n)
        .zip(yts.par_chunks_mut(fout * n))
        .enumerate()
        .for_each(|(p, (xt, yt))| {
            let (k0, len) = (p * block, xt.len() / n);
            winograd::transpose_strided(&input[k0..n * fin], fin, n, len, xt, n);
            for i0 in (0..len).step_by(SLICE) {
                let l = SLICE.min(len - i0);
                let w = &weight[k0 + i0..];
                winograd::gemm(fout, l, n, w, fin, &xt[i0 * n..], n, yt, n, i0 > 0);
            }
        });
    reduce_chunks(yts, fout * n, parts);
    for (row, y) in output[..n * fout].chunks_exact_mut(fout).enumerate() {
        for (o, y) in y.iter_mut().enumerate() {
            *y = yts[o * n + row] + bias.map_or(0.0, |b| b[o]);
        }
        act.apply(y);
    }
}

/// An optimizer step to take on a weight tensor as soon as its gradient is ready
/// ([`dense_backward`]): step `t` of `opt` on the weights with their two state buffers, as
/// [`Optimizer::update`] would take it after the backward pass.
pub struct Update<'a> {
    pub opt: Optimizer,
    pub t: u64,
    pub first: &'a mut [f32],
    pub second: &'a mut [f32],
}

/// A dense layer's backward pass: `d_input[N, in] = d_y[N, out] * weight[out, in]` (when
/// `d_input` is given, then passed back through `before`, [`Before`]), `d_weight[out, in] =
/// d_y^T * x` and `d_bias` = the column sums of `d_y`. Narrow layers (at most `NARROW`, 16
/// outputs) take the input gradient in parallel blocks of rows ([`dense_narrow_backward_input`])
/// and the weight gradient in parallel blocks of columns ([`dense_narrow_backward_weight`]).
/// Wider layers take both in one pass over the weights ([`dense_wide_backward_block`]) and,
/// with `update`, also their optimizer step, so the weight gradient is never stored; returns
/// whether the step was taken (else the caller takes it later, from `d_weight`).
#[allow(clippy::too_many_arguments)]
pub fn dense_backward(
    s: &DenseShape,
    input: &[f32],
    d_output: &[f32],
    weight: &mut [f32],
    before: Option<Before>,
    d_input: Option<&mut [f32]>,
    d_weight: &mut [f32],
    d_bias: Option<&mut [f32]>,
    update: Option<Update>,
) -> bool {
    let (n, fin, fout) = (s.batch, s.in_features, s.out_features);
    let (x, d_y) = (&input[..n * fin], &d_output[..n * fout]);
    let (weight, d_weight) = (&mut weight[..fout * fin], &mut d_weight[..fout * fin]);
    if let Some(d_bias) = d_bias {
        d_bias[..fout].fill(0.0);
        for dy in d_y.chunks_exact(fout) {
            for (b, g) in d_bias.iter_mut().zip(dy) {
                *b += g;
            }
        }
    }
    if fout <= NARROW {
        if let Some(d_x) = d_input {
            let block = row_block(n);
            d_x[..n * fin]
                .par_chunks_mut(block * fin)
                .zip(d_y.par_chunks(block * fout))
                .enumerate()
                .for_each(|(i, (dx, dy))| {
                    dense_narrow_backward_input(fin, dy, weight, before, i * block * fin, dx);
                });
        }
        par_column_blocks(
            d_weight,
            fout,
            fin,
            column_block_width(fin),
            |j0, mut dw| dense_narrow_backward_weight(fin, fout, j0, x, d_y, &mut dw),
        );
        return false;
    }
    let update = update.map(|u| {
        let len = fout * fin;
        assert!(u.first.len() >= len && u.second.len() >= len);
        (
            u.opt,
            u.t,
            Shared(u.first.as_mut_ptr()),
            Shared(u.second.as_mut_ptr()),
        )
    });
    let stepped = update.is_some();
    let d_x = d_input.map(|d| {
        assert!(
            d.len() >= n * fin,
            "dense_backward: input gradient too short"
        );
        Shared(d.as_mut_ptr())
    });
    // d_y transposed, for the input gradient's tiles: a tile's rows of d_y for one output are
    // then adjacent, read from one pointer (as the weight gradient's tiles read theirs).
    let mut d_yt = D_Y_T.take();
    if d_x.is_some() {
        d_yt.resize(n * fout, 0.0); // grows once per thread and layer size
        winograd::transpose(d_y, n, fout, &mut d_yt);
    }
    let wide = WideBackward {
        fin,
        fout,
        batch: n,
        x,
        d_y,
        d_yt: &d_yt,
        weight: Shared(weight.as_mut_ptr()),
        d_x,
        before,
        d_weight: Shared(d_weight.as_mut_ptr()),
        update,
    };
    let width = column_block_width(fin);
    (0..fin.div_ceil(width)).into_par_iter().for_each(|block| {
        let j0 = block * width;
        dense_wide_backward_block(&wide, j0, width.min(fin - j0));
    });
    D_Y_T.set(d_yt);
    stepped
}

/// What [`dense_wide_backward_block`] reads and writes, for tasks that each take their own
/// columns of the weights (and of their gradient and state, and of the input gradient).
pub struct WideBackward<'a> {
    fin: usize,
    fout: usize,
    batch: usize,
    /// `batch x fin` and `batch x fout`.
    x: &'a [f32],
    d_y: &'a [f32],
    /// `d_y` transposed: `fout x batch`.
    d_yt: &'a [f32],
    /// `fout x fin`: read for the input gradient, then stepped when `update` is given.
    weight: Shared,
    /// `batch x fin`, if wanted.
    d_x: Option<Shared>,
    before: Option<Before<'a>>,
    /// `fout x fin`: written unless `update` is given.
    d_weight: Shared,
    /// The optimizer, its step number and the weights' two state buffers (`fout x fin`).
    update: Option<(Optimizer, u64, Shared, Shared)>,
}

// SAFETY: `WideBackward` is only built by `dense_backward`, from borrows (shared for `x`, `d_y`,
// `before`; exclusive for the rest) that outlive its parallel tasks, each of which touches only
// its own columns `j0..j0 + cols` of the `Shared` matrices.
unsafe impl Sync for WideBackward<'_> {}

/// Columns `j0..j0 + cols` of a wide dense layer's backward pass ([`dense_backward`]), a strip
/// of two vectors' width at a time (32 columns on AVX-512, 16 on AVX2): first the strip's input
/// gradient, from the weights before this step (register tiles of batch rows, summing over the
/// outputs), then its weight gradient (tiles of output rows, summing over the batch in order, as
/// the reference) and, while each tile is in registers, the optimizer step on those weights. The
/// strip of weights stays in L1 between the two, and each weight, its gradient and its state
/// are touched once a step (sigmoid-bce's 4056 -> 100: the weights and their velocity are 3.2
/// MB, more than this machine's L2; two SGEMMs and a separate optimizer step streamed them and
/// the gradient several times). Then this block's input gradient goes back through `before`
/// while it is in L2. Written with explicit vectors (`Vector`): the compiler's own
/// vectorisation of these tiles, written as the other kernels', came out scalar.
pub fn dense_wide_backward_block(a: &WideBackward, j0: usize, cols: usize) {
    assert!(j0 + cols <= a.fin && a.x.len() >= a.batch * a.fin && a.d_y.len() >= a.batch * a.fout);
    match winograd::Isa::detect() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `detect` found the features these functions are compiled for.
        winograd::Isa::Avx512 => unsafe { wide_block_avx512(a, j0, cols) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        winograd::Isa::Avx2Fma => unsafe { wide_block_avx2(a, j0, cols) },
        _ => wide_block::<Quad, 4>(a, j0, cols),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn wide_block_avx512(a: &WideBackward, j0: usize, cols: usize) {
    wide_block::<std::arch::x86_64::__m512, 8>(a, j0, cols)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn wide_block_avx2(a: &WideBackward, j0: usize, cols: usize) {
    wide_block::<std::arch::x86_64::__m256, 6>(a, j0, cols)
}

/// [`dense_wide_backward_block`] with vectors `V` and register tiles of `R` rows.
#[inline(always)]
fn wide_block<V: Vector, const R: usize>(a: &WideBackward, j0: usize, cols: usize) {
    let end = j0 + cols;
    // Taken out of the thread's cell and put back, not used in a closure: a closure is a
    // function of its own, compiled without this one's instruction set, and the vector
    // intrinsics inside it would not be inlined.
    let mut packed = PACKED_STRIP.take();
    let len = (a.fout + a.batch) * 2 * V::LANES;
    if packed.len() < len {
        packed.resize(len, 0.0); // once per thread and layer size
    }
    let mut j = j0;
    while j + 2 * V::LANES <= end {
        wide_strip::<V, 2, R>(a, j, end, &mut packed);
        j += 2 * V::LANES;
    }
    while j + V::LANES <= end {
        wide_strip::<V, 1, R>(a, j, end, &mut packed);
        j += V::LANES;
    }
    while j < end {
        wide_strip::<f32, 1, 4>(a, j, end, &mut packed);
        j += 1;
    }
    PACKED_STRIP.set(packed);
    if let (Some(d_x), Some(before)) = (a.d_x, &a.before) {
        for n in 0..a.batch {
            let from = n * a.fin + j0;
            // SAFETY: row n, columns j0..j0 + cols of the batch x fin input gradient: in
            // bounds, and this task's alone.
            before.apply(from, unsafe { d_x.slice(from, cols) });
        }
    }
}

/// Columns `j..j + C * V::LANES` of [`dense_wide_backward_block`], in register tiles of `R`
/// rows (then 4, then 1), with `packed` (at least `(fout + batch) x C * V::LANES` floats) to
/// hold the strip's weights and inputs.
///
/// The strip of weights and the batch's strip of inputs are first copied into `packed`,
/// contiguous: their rows are kilobytes apart (36 KB in `default`'s 9216 -> 128, a multiple of
/// 4 KB, so that every row of a strip fell in the same two sets of L1 and the tiles read them
/// from L2 again and again). Meanwhile the tiles ask for a strip further on
/// ([`PREFETCH_STRIPS`]: weights, velocity, inputs) to be fetched into L2: rows that far apart
/// are beyond the hardware prefetchers, and a strip that waited for each of its rows spent most
/// of its time waiting.
#[inline(always)]
fn wide_strip<V: Vector, const C: usize, const R: usize>(
    a: &WideBackward,
    j: usize,
    end: usize,
    packed: &mut [f32],
) {
    let (fin, fout, width) = (a.fin, a.fout, C * V::LANES);
    let ahead = j + PREFETCH_STRIPS * width;
    let ahead = (ahead + width <= end).then_some(ahead);
    assert!(packed.len() >= (fout + a.batch) * width && j + width <= fin);
    let (packed, xs) = packed.split_at_mut(fout * width);
    let rows = (0..fout).map(|o| a.weight.at(o * fin + j) as *const f32);
    let rows = rows.chain((0..a.batch).map(|n| a.x[n * fin + j..].as_ptr()));
    for (from, to) in rows.zip(
        packed
            .chunks_exact_mut(width)
            .chain(xs.chunks_exact_mut(width)),
    ) {
        for (c, to) in to.chunks_exact_mut(V::LANES).enumerate() {
            // SAFETY: columns j..j + width <= fin of row o < fout of the weights or row n < batch
            // of x (asserted in the block).
            unsafe { V::load(from.add(c * V::LANES)).store(to.as_mut_ptr()) };
        }
    }
    let (packed, xs) = (&*packed, &xs[..a.batch * width]);
    if a.d_x.is_some() {
        let mut n = 0;
        while n + R <= a.batch {
            wide_input_tile::<V, C, R>(a, packed, n, j, ahead);
            n += R;
        }
        while n + 4 <= a.batch {
            wide_input_tile::<V, C, 4>(a, packed, n, j, ahead);
            n += 4;
        }
        while n < a.batch {
            wide_input_tile::<V, C, 1>(a, packed, n, j, ahead);
            n += 1;
        }
    }
    let mut o = 0;
    while o + R <= a.fout {
        wide_weight_tile::<V, C, R>(a, packed, xs, o, j, ahead);
        o += R;
    }
    while o + 4 <= a.fout {
        wide_weight_tile::<V, C, 4>(a, packed, xs, o, j, ahead);
        o += 4;
    }
    while o < a.fout {
        wide_weight_tile::<V, C, 1>(a, packed, xs, o, j, ahead);
        o += 1;
    }
}

/// `d_x[n0 + r][j..j + C * V::LANES] = Σ_o d_y[n0 + r][o] w[o]` for `r < R`, `w` being the
/// strip of weights before this step, packed (`fout` rows of `C * V::LANES`).
#[inline(always)]
fn wide_input_tile<V: Vector, const C: usize, const R: usize>(
    a: &WideBackward,
    packed: &[f32],
    n0: usize,
    j: usize,
    ahead: Option<usize>,
) {
    let (fin, fout, width) = (a.fin, a.fout, C * V::LANES);
    assert!(n0 + R <= a.batch && j + width <= fin && packed.len() >= fout * width);
    assert!(a.d_yt.len() >= fout * a.batch);
    let d_x = a.d_x.unwrap();
    // SAFETY: rows n0..n0 + R < batch of d_y and d_x, columns o < fout of d_y, rows o < fout of
    // `packed`, and columns j..j + width <= fin of d_x, this task's own (asserted here and in
    // the block).
    unsafe {
        let mut acc = [[V::zero(); C]; R];
        let (mut w_row, mut d_y) = (packed.as_ptr(), a.d_yt.as_ptr().add(n0));
        for _ in 0..fout {
            let w: [V; C] = std::array::from_fn(|c| V::load(w_row.add(c * V::LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let g = V::splat(*d_y.add(r));
                for (s, &w) in acc.iter_mut().zip(&w) {
                    *s = s.madd(g, w);
                }
            }
            w_row = w_row.add(width);
            d_y = d_y.add(a.batch);
        }
        for (r, acc) in acc.iter().enumerate() {
            let out = d_x.at((n0 + r) * fin + j);
            for (c, v) in acc.iter().enumerate() {
                v.store(out.add(c * V::LANES));
            }
        }
    }
    if let Some(ahead) = ahead {
        for n in n0..n0 + R {
            for k in (0..width).step_by(16) {
                prefetch(a.x[n * fin + ahead + k..].as_ptr(), false);
            }
        }
    }
}

/// `g[o0 + r][j..j + C * V::LANES] = Σ_n d_y[n][o0 + r] x[n][j..]` for `r < R`, then the
/// optimizer step on those weights (their values before it read from `packed`), or `g` stored
/// as `d_weight`.
#[inline(always)]
fn wide_weight_tile<V: Vector, const C: usize, const R: usize>(
    a: &WideBackward,
    packed: &[f32],
    xs: &[f32],
    o0: usize,
    j: usize,
    ahead: Option<usize>,
) {
    let (fin, fout, width) = (a.fin, a.fout, C * V::LANES);
    assert!(o0 + R <= fout && j + width <= fin && packed.len() >= fout * width);
    assert!(xs.len() >= a.batch * width);
    // The next tile's velocity into L1 while this one sums over the batch: its step would
    // otherwise wait on each row.
    if let Some((_, _, first, _)) = a.update {
        for o in (o0 + R..o0 + 2 * R).take_while(|&o| o < fout) {
            for k in (0..width).step_by(16) {
                prefetch(first.at(o * fin + j + k), true);
            }
        }
    }
    // SAFETY: rows n < batch of x and d_y (asserted in the block), columns j..j + width <= fin
    // of x and o0..o0 + R <= fout of d_y; then rows o0 + r < fout, columns j..j + width of the
    // fout x fin weights, gradient and state buffers (these at least that long, asserted in
    // `dense_backward`), this task's columns, and of `packed`.
    unsafe {
        let mut acc = [[V::zero(); C]; R];
        let (mut x, mut d_y) = (xs.as_ptr(), a.d_y.as_ptr().add(o0));
        for _ in 0..a.batch {
            let xs: [V; C] = std::array::from_fn(|c| V::load(x.add(c * V::LANES)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let g = V::splat(*d_y.add(r));
                for (s, &x) in acc.iter_mut().zip(&xs) {
                    *s = s.madd(g, x);
                }
            }
            x = x.add(width);
            d_y = d_y.add(fout);
        }
        for (r, acc) in acc.iter().enumerate() {
            let at = (o0 + r) * fin + j;
            let old = packed.as_ptr().add((o0 + r) * width);
            match a.update {
                Some((opt, _, first, _)) if opt.kind == OptimizerKind::Sgd => {
                    let (lr, momentum) = (V::splat(opt.lr), V::splat(opt.momentum));
                    let decay = (opt.weight_decay != 0.0).then(|| V::splat(opt.weight_decay));
                    for (c, &g) in acc.iter().enumerate() {
                        let k = c * V::LANES;
                        let (w, m) = (V::load(old.add(k)), first.at(at + k));
                        V::sgd(lr, momentum, decay, w, a.weight.at(at + k), g, m);
                    }
                }
                Some((opt, t, first, second)) => {
                    // A strip is at most two AVX-512 vectors wide.
                    let mut g = [0.0f32; 32];
                    let g = &mut g[..width];
                    for (c, v) in acc.iter().enumerate() {
                        v.store(g[c * V::LANES..].as_mut_ptr());
                    }
                    let p = a.weight.slice(at, width);
                    let (m, v) = (first.slice(at, width), second.slice(at, width));
                    opt.update(t, p, g, m, v);
                }
                None => {
                    for (c, v) in acc.iter().enumerate() {
                        v.store(a.d_weight.at(at + c * V::LANES));
                    }
                }
            }
        }
    }
    if let Some(ahead) = ahead {
        for o in o0..o0 + R {
            for k in (0..width).step_by(16) {
                prefetch(a.weight.at(o * fin + ahead + k), false);
                if let Some((_, _, first, _)) = a.update {
                    prefetch(first.at(o * fin + ahead + k), false);
                }
            }
        }
    }
}

thread_local! {
    /// The calling thread's buffer for [`dense_backward`]'s `d_y` transposed.
    static D_Y_T: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// Each thread's buffer for [`wide_strip`]'s strip of weights and of inputs.
    static PACKED_STRIP: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// How many strips ahead [`wide_strip`]'s tiles fetch weights, velocity and inputs (1 and 2
/// measured alike).
const PREFETCH_STRIPS: usize = 2;

/// Asks for the cache line holding `p` to be brought into L2 (or into L1 as well, with `l1`).
#[inline(always)]
fn prefetch(p: *const f32, l1: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if l1 {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8)
        } else {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, l1);
}

/// A vector of `LANES` floats, for the kernels written with explicit vectors: AVX-512's and
/// AVX2's registers, four floats for other targets (which the compiler maps to SSE or NEON),
/// and one float for the columns left over.
trait Vector: Copy {
    const LANES: usize;
    /// # Safety
    /// These and the others: the CPU has the type's instruction set.
    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    /// # Safety
    /// `p..p + LANES` readable (for `store`, writable).
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// `self + a * b`, fused.
    unsafe fn madd(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;

    /// [`r::sgd_update`] on `LANES` weights, `w` (stored back at `p`), with gradient `g` and
    /// velocity at `m`, with the same operations in the same order (unfused), so the same results.
    #[inline(always)]
    unsafe fn sgd(
        lr: Self,
        momentum: Self,
        decay: Option<Self>,
        w: Self,
        p: *mut f32,
        g: Self,
        m: *mut f32,
    ) {
        // SAFETY: as the caller promises.
        unsafe {
            let g = match decay {
                Some(d) => g.add(d.mul(w)),
                None => g,
            };
            let v = momentum.mul(Self::load(m)).add(g);
            v.store(m);
            w.sub(lr.mul(v)).store(p);
        }
    }
}

impl Vector for f32 {
    const LANES: usize = 1;
    #[inline(always)]
    unsafe fn zero() -> Self {
        0.0
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        x
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { *p }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { *p = self }
    }
    #[inline(always)]
    unsafe fn madd(self, a: Self, b: Self) -> Self {
        madd::<{ cfg!(target_arch = "aarch64") }>(a, b, self)
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        self + b
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        self - b
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        self * b
    }
}

/// Four floats, element by element, for targets without the x86 kernels.
#[derive(Clone, Copy)]
struct Quad([f32; 4]);

impl Quad {
    #[inline(always)]
    fn map2(self, b: Quad, f: impl Fn(f32, f32) -> f32) -> Quad {
        Quad(std::array::from_fn(|i| f(self.0[i], b.0[i])))
    }
}

impl Vector for Quad {
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Quad([0.0; 4])
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        Quad([x; 4])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        unsafe { Quad(*(p as *const [f32; 4])) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        unsafe { *(p as *mut [f32; 4]) = self.0 }
    }
    #[inline(always)]
    unsafe fn madd(self, a: Self, b: Self) -> Self {
        if cfg!(target_arch = "aarch64") {
            Quad(std::array::from_fn(|i| a.0[i].mul_add(b.0[i], self.0[i])))
        } else {
            Quad(std::array::from_fn(|i| self.0[i] + a.0[i] * b.0[i]))
        }
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        self.map2(b, |a, b| a + b)
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        self.map2(b, |a, b| a - b)
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        self.map2(b, |a, b| a * b)
    }
}

/// Defines [`Vector`] for an x86 vector type with its intrinsics.
#[cfg(target_arch = "x86_64")]
macro_rules! x86_vector {
    ($ty:ty, $lanes:expr, $zero:ident, $set1:ident, $loadu:ident, $storeu:ident, $fmadd:ident, $add:ident, $sub:ident, $mul:ident) => {
        impl Vector for $ty {
            const LANES: usize = $lanes;
            #[inline(always)]
            unsafe fn zero() -> Self {
                unsafe { std::arch::x86_64::$zero() }
            }
            #[inline(always)]
            unsafe fn splat(x: f32) -> Self {
                unsafe { std::arch::x86_64::$set1(x) }
            }
            #[inline(always)]
            unsafe fn load(p: *const f32) -> Self {
                unsafe { std::arch::x86_64::$loadu(p) }
            }
            #[inline(always)]
            unsafe fn store(self, p: *mut f32) {
                unsafe { std::arch::x86_64::$storeu(p, self) }
            }
            #[inline(always)]
            unsafe fn madd(self, a: Self, b: Self) -> Self {
                unsafe { std::arch::x86_64::$fmadd(a, b, self) }
            }
            #[inline(always)]
            unsafe fn add(self, b: Self) -> Self {
                unsafe { std::arch::x86_64::$add(self, b) }
            }
            #[inline(always)]
            unsafe fn sub(self, b: Self) -> Self {
                unsafe { std::arch::x86_64::$sub(self, b) }
            }
            #[inline(always)]
            unsafe fn mul(self, b: Self) -> Self {
                unsafe { std::arch::x86_64::$mul(self, b) }
            }
        }
    };
}

#[cfg(target_arch = "x86_64")]
x86_vector!(
    std::arch::x86_64::__m512,
    16,
    _mm512_setzero_ps,
    _mm512_set1_ps,
    _mm512_loadu_ps,
    _mm512_storeu_ps,
    _mm512_fmadd_ps,
    _mm512_add_ps,
    _mm512_sub_ps,
    _mm512_mul_ps
);
#[cfg(target_arch = "x86_64")]
x86_vector!(
    std::arch::x86_64::__m256,
    8,
    _mm256_setzero_ps,
    _mm256_set1_ps,
    _mm256_loadu_ps,
    _mm256_storeu_ps,
    _mm256_fmadd_ps,
    _mm256_add_ps,
    _mm256_sub_ps,
    _mm256_mul_ps
);

/// A matrix's address, shared by parallel tasks that each touch their own elements (a method,
/// so that closures capture `Shared`, not the pointer, which is not `Send`).
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: only the users' disjoint accesses happen through it (see each `unsafe` block).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// Element `at`.
    fn at(self, at: usize) -> *mut f32 {
        self.0.wrapping_add(at)
    }

    /// Elements `at..at + len`.
    ///
    /// # Safety
    /// They must be in bounds, and nobody else may access them while the slice lives.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice<'a>(self, at: usize, len: usize) -> &'a mut [f32] {
        // SAFETY: as the caller promises.
        unsafe { std::slice::from_raw_parts_mut(self.at(at), len) }
    }
}

// ---------------------------------------------------------------------------------------------
// Elementwise layers and pooling, parallel over samples
// ---------------------------------------------------------------------------------------------

pub(super) fn per_sample<F>(len: usize, batch: usize, input: &[f32], output: &mut [f32], f: F)
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
    let w = s.in_width;
    output[..s.output_len()]
        .par_chunks_mut(out_len)
        .zip(argmax[..s.output_len()].par_chunks_mut(out_len))
        .zip(input[..s.input_len()].par_chunks(in_len))
        .for_each(|((y, arg), x)| {
            for c in 0..s.channels {
                let (y, arg) = (
                    &mut y[c * out_plane..][..out_plane],
                    &mut arg[c * out_plane..][..out_plane],
                );
                for oy in 0..oh {
                    let (y, arg) = (&mut y[oy * ow..][..ow], &mut arg[oy * ow..][..ow]);
                    let top = c * in_plane + oy * s.stride * w;
                    if s.window == 2 && s.stride == 2 {
                        // The common 2x2 case, the same comparisons in the same order.
                        let (r0, r1) = (&x[top..][..2 * ow], &x[top + w..][..2 * ow]);
                        for (ox, (y, arg)) in y.iter_mut().zip(arg.iter_mut()).enumerate() {
                            let i = 2 * ox;
                            let (mut best, mut at) = (r0[i], top + i);
                            for (v, j) in [
                                (r0[i + 1], top + i + 1),
                                (r1[i], top + w + i),
                                (r1[i + 1], top + w + i + 1),
                            ] {
                                if v > best {
                                    (best, at) = (v, j);
                                }
                            }
                            *y = best;
                            *arg = at as u32;
                        }
                        continue;
                    }
                    for (ox, (y, arg)) in y.iter_mut().zip(arg.iter_mut()).enumerate() {
                        let mut best = top + ox * s.stride;
                        for wy in 0..s.window {
                            let row = top + wy * w + ox * s.stride;
                            for i in row..row + s.window {
                                if x[i] > x[best] {
                                    best = i;
                                }
                            }
                        }
                        *y = x[best];
                        *arg = best as u32;
                    }
                }
            }
        });
}

/// Max pooling backward: each output's gradient goes to the input its forward pass chose. With
/// `relu_input` (the pool's input, the output of a ReLU), only where that input is positive: the
/// ReLU's backward pass folded in.
pub fn max_pool2d_backward(
    s: &Pool2dShape,
    argmax: &[u32],
    d_output: &[f32],
    relu_input: Option<&[f32]>,
    d_input: &mut [f32],
) {
    let one = Pool2dShape { batch: 1, ..*s };
    let (in_len, out_len) = (one.input_len(), one.output_len());
    d_input[..s.input_len()]
        .par_chunks_mut(in_len)
        .zip(argmax[..s.output_len()].par_chunks(out_len))
        .zip(d_output[..s.output_len()].par_chunks(out_len))
        .enumerate()
        .for_each(|(n, ((dx, arg), dy))| {
            dx.fill(0.0);
            match relu_input {
                None => {
                    for (&i, &g) in arg.iter().zip(dy) {
                        dx[i as usize] += g;
                    }
                }
                Some(x) => {
                    let x = &x[n * in_len..][..in_len];
                    // A select, not a branch: a ReLU's output is positive about half the time,
                    // and the mispredicted branch cost `default`'s pool backward a third of
                    // its 1.6 ms.
                    for (&i, &g) in arg.iter().zip(dy) {
                        dx[i as usize] += if x[i as usize] > 0.0 { g } else { 0.0 };
                    }
                }
            }
        });
}

/// Average pooling forward, plane by plane ([`avg_pool_plane_forward`]).
pub fn avg_pool2d_forward(s: &Pool2dShape, input: &[f32], output: &mut [f32]) {
    let in_plane = s.in_height * s.in_width;
    let out_plane = s.out_height() * s.out_width();
    output[..s.output_len()]
        .par_chunks_mut(out_plane)
        .zip(input[..s.input_len()].par_chunks(in_plane))
        .for_each_init(
            || vec![0.0; s.in_width],
            |row, (y, x)| avg_pool_plane_forward(s, x, y, row),
        );
}

/// Average pooling backward, plane by plane ([`avg_pool_plane_backward`]).
pub fn avg_pool2d_backward(s: &Pool2dShape, d_output: &[f32], d_input: &mut [f32]) {
    let in_plane = s.in_height * s.in_width;
    let out_plane = s.out_height() * s.out_width();
    d_input[..s.input_len()]
        .par_chunks_mut(in_plane)
        .zip(d_output[..s.output_len()].par_chunks(out_plane))
        .for_each_init(
            || vec![0.0; s.in_width],
            |row, (dx, dy)| avg_pool_plane_backward(s, dy, dx, row),
        );
}

/// Normalise the images `indices` of `data` into `x`, their labels into `labels`; with `augment`
/// (the ranges, [`r::augment_seed`]'s stream and the step), each image augmented as
/// [`r::gather_batch_augmented`] does, an image per task.
pub(super) fn gather(
    data: &Dataset,
    indices: &[u32],
    norm: Normalization,
    augment: Option<(&r::Augment, u32, u32)>,
    x: &mut [f32],
    labels: &mut Vec<u8>,
) {
    labels.clear();
    labels.extend(indices.iter().map(|&i| data.labels[i as usize]));
    let x = &mut x[..indices.len() * IMAGE_PIXELS];
    let Some((a, seed, step)) = augment else {
        // Every pixel value's input, computed once (the same operations, so the same floats):
        // the two divisions a pixel cost more than the rest of the gather (`sigmoid-bce`'s batch
        // of 32 took 22 us). In one block of images a thread: a task an image cost as much again.
        let table: [f32; 256] = std::array::from_fn(|p| norm.apply(p as u8));
        let per = row_block(indices.len());
        x.par_chunks_mut(per * IMAGE_PIXELS)
            .zip(indices.par_chunks(per))
            .for_each(|(x, indices)| {
                for &i in indices {
                    let image = data.image(i as usize);
                    for k in (0..IMAGE_PIXELS).step_by(64) {
                        prefetch(image[k..].as_ptr().cast(), true);
                    }
                    prefetch(image[IMAGE_PIXELS - 1..].as_ptr().cast(), true);
                }
                for (x, &i) in x.chunks_exact_mut(IMAGE_PIXELS).zip(indices) {
                    for (v, &p) in x.iter_mut().zip(data.image(i as usize)) {
                        *v = table[p as usize];
                    }
                }
            });
        return;
    };
    x.par_chunks_mut(IMAGE_PIXELS)
        .zip(indices.par_iter())
        .enumerate()
        .for_each(|(slot, (x, &i))| {
            let t = r::augment_transform(a, seed, step, slot as u32);
            r::augment_image(data.image(i as usize), IMAGE_SIDE, &t, x);
            for v in x.iter_mut() {
                *v = (*v - norm.mean) / norm.std;
            }
        });
}

/// An activation a layer applies to its own output (see [`conv2d_forward`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Epilogue {
    #[default]
    None,
    Relu,
    Tanh,
    Sigmoid,
}

impl Epilogue {
    /// The epilogue for a layer followed by `next` (`None` unless it is an activation).
    pub fn before(next: Option<&crate::spec::Layer>) -> Epilogue {
        use crate::spec::Layer;
        match next {
            Some(Layer::Relu) => Epilogue::Relu,
            Some(Layer::Tanh) => Epilogue::Tanh,
            Some(Layer::Sigmoid) => Epilogue::Sigmoid,
            _ => Epilogue::None,
        }
    }

    /// `y = act(y)` in place, with the same functions as the activation layers.
    pub fn apply(self, y: &mut [f32]) {
        match self {
            Epilogue::None => {}
            Epilogue::Relu => relu_in_place(y),
            Epilogue::Tanh => tanh_in_place(y),
            Epilogue::Sigmoid => sigmoid_in_place(y),
        }
    }
}

/// `d *= act'(y)` in place, `y` being the activation's output, with the reference's formulas.
#[inline(always)]
fn act_backward(act: Epilogue, d: &mut [f32], y: &[f32]) {
    let each = d.iter_mut().zip(y);
    match act {
        Epilogue::None => {}
        Epilogue::Relu => each.for_each(|(d, &y)| *d = kept_if(y > 0.0, *d)),
        Epilogue::Tanh => each.for_each(|(d, &y)| *d *= 1.0 - y * y),
        Epilogue::Sigmoid => each.for_each(|(d, &y)| *d = *d * y * (1.0 - y)),
    }
}

/// What a layer's input gradient is passed back through before it is stored, folding in those
/// layers' backward passes: an activation just before the layer, or a dropout just before a
/// dense layer (directly or through a flatten) and the activation before that dropout. The
/// dropout's own backward pass, when nothing folds it, is this on a copy of its gradient.
#[derive(Debug, Clone, Copy)]
pub struct Before<'a> {
    /// The activation, and its output for the whole batch (the dropout's input, or this
    /// layer's input): `d *= act'(out)`.
    pub act: Epilogue,
    pub out: &'a [f32],
    /// The dropout's `1 / (1 - p)` and its kept mask for the whole batch
    /// ([`dropout_backward`]).
    pub dropout: Option<(f32, &'a [u8])>,
}

impl Before<'_> {
    /// Back through these layers, for the elements `from..from + d.len()` of the batch.
    #[inline(always)]
    fn apply(&self, from: usize, d: &mut [f32]) {
        let out = if self.act == Epilogue::None {
            &[][..]
        } else {
            &self.out[from..from + d.len()]
        };
        match self.dropout {
            Some((scale, keep)) => {
                dropout_backward_in_place(scale, &keep[from..from + d.len()], self.act, out, d)
            }
            None => act_backward(self.act, d, out),
        }
    }
}

crate::exec::fast::winograd::multiversion! {
/// `Direct::narrow`: planes of `plane` floats in rows of `wp`, of which the first `ow` of the
/// first `oh` rows are kept, biased and passed through `act` ([`Epilogue::apply`]), each plane
/// while it is in L1 (compiled for each instruction set: in the executor's closure, baseline
/// SSE2, this copy and the ReLU over the whole sample after it were slower).
pub fn direct_narrow(
    wide: &[f32],
    plane_and_row: (usize, usize),
    out_size: (usize, usize),
    bias: Option<&[f32]>,
    act: Epilogue,
    y: &mut [f32],
) {
    let ((plane, wp), (oh, ow)) = (plane_and_row, out_size);
    for (o, (y, wide)) in y.chunks_exact_mut(oh * ow).zip(wide.chunks_exact(plane)).enumerate() {
        let b = bias.map_or(0.0, |b| b[o]);
        for (y, wide) in y.chunks_exact_mut(ow).zip(wide.chunks(wp)) {
            for (y, &v) in y.iter_mut().zip(wide) {
                *y = v + b;
            }
        }
        act.apply(y);
    }
}
}

crate::exec::fast::winograd::multiversion! {
/// [`Before::apply`], compiled for each instruction set.
pub fn before_backward_in_place(before: &Before, from: usize, d: &mut [f32]) {
    before.apply(from, d);
}
}

/// [`r::relu_forward`] in place.
pub(super) fn relu_in_place(y: &mut [f32]) {
    for y in y {
        *y = if *y > 0.0 { *y } else { 0.0 };
    }
}

pub(super) fn elementwise_backward(
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

crate::exec::fast::winograd::multiversion! {
/// `y[j] = x[j] / (1 - p)` where the reference's dropout keeps element `first + j` of the batch
/// tensor (`r::dropout_keep`), else 0, and `keep[j]` = whether it is kept (for the backward
/// pass). The per-step part of the hash is computed once, and the loop vectorises (32-bit
/// multiplies and a compare per element).
pub fn dropout_forward_sample(
    p: f32,
    seed: u32,
    step: u32,
    first: usize,
    x: &[f32],
    y: &mut [f32],
    keep: &mut [u8],
) {
    let base = r::hash_u32(r::hash_u32(seed) ^ step);
    let scale = 1.0 / (1.0 - p);
    for (j, ((y, &x), keep)) in y.iter_mut().zip(x).zip(keep).enumerate() {
        let h = r::hash_u32(base ^ (first + j) as u32);
        let kept = (h >> 8) as f32 * (1.0 / 16_777_216.0) >= p;
        // Written as `dropped`'s mask rather than `if kept { x * scale } else { 0.0 }`, which
        // compiled to a masked load of `x` (vmaskmovps) that stalled the loop: 44% of its time.
        *y = dropped(scale, kept as u8, x);
        *keep = kept as u8;
    }
}
}

/// Training-time dropout with the reference's mask, element indices counted over the batch;
/// the mask is kept in `keep` (a byte an element) for [`dropout_backward`].
#[allow(clippy::too_many_arguments)]
pub(super) fn dropout_apply(
    l: &ResolvedLayer,
    p: f32,
    seed: u64,
    step: u32,
    batch: usize,
    x: &[f32],
    y: &mut [f32],
    keep: &mut [u8],
) {
    let seed = dropout_seed(seed, l.index);
    let n = l.output.len();
    y[..batch * n]
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .zip(keep.par_chunks_mut(n))
        .enumerate()
        .for_each(|(sample, ((y, x), keep))| {
            dropout_forward_sample(p, seed, step, sample * n, x, y, keep)
        });
}

/// The backward pass of [`dropout_apply`] from the mask it kept: `d_x = d_y / (1 - p)` where
/// kept, else 0 (the same values as hashing again, which cost as much as the forward pass:
/// `two-conv`'s 590K elements took 584 us here).
///
/// With an activation in `act` (the layer before the dropout, whose output `t` is the
/// dropout's input), also back through it in the same pass, with the reference's formula.
pub(super) fn dropout_backward(
    p: f32,
    keep: &[u8],
    act: Epilogue,
    t: &[f32],
    d_y: &[f32],
    d_x: &mut [f32],
) {
    let before = Before {
        act,
        out: t,
        dropout: Some((1.0 / (1.0 - p), keep)),
    };
    const CHUNK: usize = 16384;
    d_x.par_chunks_mut(CHUNK)
        .zip(d_y.par_chunks(CHUNK))
        .enumerate()
        .for_each(|(i, (dx, dy))| {
            dx.copy_from_slice(dy);
            before_backward_in_place(&before, i * CHUNK, dx);
        });
}

/// `d_y / (1 - p)` where kept, else 0, without a branch (the mask is random, so a branch would
/// be mispredicted half the time: 1.7 ms for `two-conv`'s 590K elements).
#[inline(always)]
fn dropped(scale: f32, k: u8, dy: f32) -> f32 {
    kept_if(k != 0, dy * scale)
}

/// `v` if `keep`, else +0, by masking its bits: `if keep { v } else { 0.0 }` on a value in memory
/// can compile to masked loads and stores (vmaskmovps), which stalled these loops.
#[inline(always)]
fn kept_if(keep: bool, v: f32) -> f32 {
    let all_or_none = (keep as u32).wrapping_neg(); // 1 -> all bits set, 0 -> none
    f32::from_bits(v.to_bits() & all_or_none)
}

/// [`dropout_backward`] on the gradient in place (for [`Before::apply`]).
#[inline(always)]
fn dropout_backward_in_place(scale: f32, keep: &[u8], act: Epilogue, t: &[f32], d: &mut [f32]) {
    if act == Epilogue::None {
        // (`t` may be empty then.)
        d.iter_mut()
            .zip(keep)
            .for_each(|(d, &k)| *d = dropped(scale, k, *d));
        return;
    }
    let each = d.iter_mut().zip(keep).zip(t);
    match act {
        Epilogue::None => unreachable!("handled above"),
        Epilogue::Tanh => each.for_each(|((d, &k), &t)| *d = dropped(scale, k, *d) * (1.0 - t * t)),
        Epilogue::Sigmoid => {
            each.for_each(|((d, &k), &t)| *d = dropped(scale, k, *d) * t * (1.0 - t))
        }
        Epilogue::Relu => each.for_each(|((d, &k), &t)| {
            *d = dropped(scale, k & (t > 0.0) as u8, *d);
        }),
    }
}

// ---------------------------------------------------------------------------------------------
// tanh and sigmoid: branch-free approximations that vectorise (the reference calls libm's tanhf
// and expf one value at a time, which cost ~15 ns a value here: 55% of the `dropout` preset's
// step went to its tanh).
// ---------------------------------------------------------------------------------------------

// `exp_approx`'s constants, shared with `sigmoid_avx512`: the range it clamps to, ln 2 in two
// parts (the first exact in few bits, so that `n * ln 2` is exact in it) and the coefficients of
// `e^r = 1 + r + r² P(r)` on `|r| <= ln 2 / 2`, highest first.
const EXP_RANGE: (f32, f32) = (-87.3, 88.3);
const LN2_PARTS: (f32, f32) = (0.693_359_4, -2.121_944_4e-4);
const EXP_POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    1.666_666_5e-1,
    0.5,
];

/// e^x, Cephes' `expf`: x = n ln 2 + r with |r| <= ln 2 / 2, a degree-6 polynomial in r, times
/// 2^n put straight into the exponent bits. Within 1 ulp of e^x for x in [-87.3, 88.3], the range
/// it clamps to (so 2^n stays a normal number); NaN stays NaN. No branch and no table, so a loop
/// calling it vectorises on every instruction set.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    let x = x.clamp(EXP_RANGE.0, EXP_RANGE.1);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_PARTS.0 - n * LN2_PARTS.1;
    let mut p = EXP_POLY[0];
    for c in &EXP_POLY[1..] {
        p = p * r + c;
    }
    let p = p * (r * r) + r + 1.0;
    // 2^n: n + 127 (in 1..=254) lands in the low mantissa bits of 1.5 * 2^23 + n + 127, and the
    // shift moves it into the exponent (a float-to-int `as` would saturate, which AVX2 does not
    // do in one instruction).
    let biased = (n + (12_582_912.0 + 127.0)).to_bits();
    p * f32::from_bits(biased << 23)
}

/// tanh as a rational function, Eigen's `ptanh_float`: `x P(x²) / Q(x²)` (degrees 13 and 6) on
/// x clamped to ±7.905 (where tanh rounds to ±1), and x itself below 4e-4. Within 7 ulp of tanh
/// (near |x| = 5.8, where that is 4e-7 absolute; checked against f64 below): the reference's libm
/// tanhf is within 1, an earlier polynomial-or-exp version here within 1 at twice the cost. One
/// division and no exponential: 0.8 ms for 590K values on one core here, against 1.7 ms for the
/// exp-based version and ~9 ms for libm.
#[inline(always)]
pub fn tanh_approx(x: f32) -> f32 {
    let xc = x.clamp(-7.905_311, 7.905_311);
    let x2 = xc * xc;
    let mut p = x2 * -2.760_768_5e-16 + 2.000_188e-13;
    p = x2 * p + -8.604_672e-11;
    p = x2 * p + 5.122_297e-8;
    p = x2 * p + 1.485_722_4e-5;
    p = x2 * p + 6.372_619_3e-4;
    p = x2 * p + 4.893_524_6e-3;
    let mut q = x2 * 1.198_258_4e-6 + 1.185_347e-4;
    q = x2 * q + 2.268_434_6e-3;
    q = x2 * q + 4.893_525e-3;
    if x.abs() < 4e-4 {
        x
    } else {
        xc * p / q
    }
}

/// The reference's sigmoid (`1 / (1 + e^-x)` for x >= 0, `e^x / (1 + e^x)` below) with
/// [`exp_approx`], both branches as one division: within 2 ulp.
#[inline(always)]
pub fn sigmoid_approx(x: f32) -> f32 {
    let e = exp_approx(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { e };
    numerator / (1.0 + e)
}

crate::exec::fast::winograd::multiversion! {
/// `y = tanh(x)` elementwise ([`tanh_approx`]).
pub fn tanh_forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = tanh_approx(x);
    }
}
}

crate::exec::fast::winograd::multiversion! {
/// [`tanh_forward`] in place.
pub fn tanh_in_place(y: &mut [f32]) {
    for y in y {
        *y = tanh_approx(*y);
    }
}
}

/// [`sigmoid_forward`] in place: with AVX-512, `sigmoid_avx512` (below).
pub fn sigmoid_in_place(y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if winograd::Isa::detect() == winograd::Isa::Avx512 {
        // SAFETY: `detect` found AVX-512F.
        return unsafe { sigmoid_avx512(y) };
    }
    sigmoid_in_place_each(y);
}

crate::exec::fast::winograd::multiversion! {
/// [`sigmoid_in_place`] value by value ([`sigmoid_approx`]).
pub fn sigmoid_in_place_each(y: &mut [f32]) {
    for y in y {
        *y = sigmoid_approx(*y);
    }
}
}

/// [`sigmoid_in_place`] sixteen values at a time as `1 / (1 + e^-x)` (one formula: for x below
/// zero `e^-x` is large and the quotient as exact as the other branch's), with
/// [`exp_approx`]'s reduction and polynomial and AVX-512's `scalef` for `2^n`: 18 instructions
/// a vector against 27 for the compiler's vectorisation of `sigmoid_approx`: 130K values
/// (`sigmoid-bce`'s first convolution at batch 32) in 34 us on one core instead of 54, and that
/// layer's forward pass 66-69 -> 55-57 us a step (`bench --profile`). Within 2 ulp, as
/// `sigmoid_approx` (tested below). The values past the last whole vector go through it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn sigmoid_avx512(y: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut vectors = y.chunks_exact_mut(16);
    for v in &mut vectors {
        // SAFETY: 16 floats at `v`; the CPU has AVX-512F (this function's feature).
        unsafe {
            let p = v.as_mut_ptr();
            let one = _mm512_set1_ps(1.0);
            let x = _mm512_loadu_ps(p);
            // e^-x: a = -x clamped (NaN kept: max and min return their second operand then).
            let a = _mm512_sub_ps(_mm512_setzero_ps(), x);
            let (lo, hi) = EXP_RANGE;
            let a = _mm512_min_ps(_mm512_set1_ps(hi), _mm512_max_ps(_mm512_set1_ps(lo), a));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(a, _mm512_set1_ps(std::f32::consts::LOG2_E)),
            );
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_PARTS.0), a);
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_PARTS.1), r);
            let mut q = _mm512_set1_ps(EXP_POLY[0]);
            for &c in &EXP_POLY[1..] {
                q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(c));
            }
            let e = _mm512_add_ps(_mm512_fmadd_ps(q, _mm512_mul_ps(r, r), r), one);
            let e = _mm512_scalef_ps(e, n);
            _mm512_storeu_ps(p, _mm512_div_ps(one, _mm512_add_ps(one, e)));
        }
    }
    for y in vectors.into_remainder() {
        *y = sigmoid_approx(*y);
    }
}

crate::exec::fast::winograd::multiversion! {
/// `y = sigmoid(x)` elementwise ([`sigmoid_approx`]).
pub fn sigmoid_forward(x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = sigmoid_approx(x);
    }
}
}

// ---------------------------------------------------------------------------------------------
// Average pooling, separably: the window's rows summed as whole input rows (vectorised), then
// its columns along the summed row. The reference sums each window in row-major order, so the
// results differ in the last bits.
// ---------------------------------------------------------------------------------------------

crate::exec::fast::winograd::multiversion! {
/// One plane (`h x w` input) of [`avg_pool2d_forward`]; `row` holds `w` values of scratch.
pub fn avg_pool_plane_forward(s: &Pool2dShape, x: &[f32], y: &mut [f32], row: &mut [f32]) {
    let (w, k, st) = (s.in_width, s.window, s.stride);
    let (oh, ow) = (s.out_height(), s.out_width());
    let count = (k * k) as f32;
    for oy in 0..oh {
        let top = oy * st * w;
        row.copy_from_slice(&x[top..top + w]);
        for ky in 1..k {
            for (r, &v) in row.iter_mut().zip(&x[top + ky * w..top + (ky + 1) * w]) {
                *r += v;
            }
        }
        let out = &mut y[oy * ow..(oy + 1) * ow];
        if st == 1 {
            // Contiguous windows: each pass is a vector add of a shifted row.
            out.copy_from_slice(&row[..ow]);
            for kx in 1..k {
                for (o, &v) in out.iter_mut().zip(&row[kx..kx + ow]) {
                    *o += v;
                }
            }
        } else {
            for (ox, o) in out.iter_mut().enumerate() {
                *o = row[ox * st];
            }
            for kx in 1..k {
                for (ox, o) in out.iter_mut().enumerate() {
                    *o += row[ox * st + kx];
                }
            }
        }
        for o in out.iter_mut() {
            *o /= count;
        }
    }
}
}

crate::exec::fast::winograd::multiversion! {
/// One plane of [`avg_pool2d_backward`]: each output row's shares spread along an input row
/// (`row`, `w` values of scratch), then added to the window's input rows.
pub fn avg_pool_plane_backward(s: &Pool2dShape, d_y: &[f32], d_x: &mut [f32], row: &mut [f32]) {
    let (w, k, st) = (s.in_width, s.window, s.stride);
    let (oh, ow) = (s.out_height(), s.out_width());
    let count = (k * k) as f32;
    d_x.fill(0.0);
    for oy in 0..oh {
        row.fill(0.0);
        let dy = &d_y[oy * ow..(oy + 1) * ow];
        for kx in 0..k {
            if st == 1 {
                for (r, &g) in row[kx..kx + ow].iter_mut().zip(dy) {
                    *r += g / count;
                }
            } else {
                for (ox, &g) in dy.iter().enumerate() {
                    row[ox * st + kx] += g / count;
                }
            }
        }
        let top = oy * st * w;
        for ky in 0..k {
            for (d, &r) in d_x[top + ky * w..top + (ky + 1) * w].iter_mut().zip(row.iter()) {
                *d += r;
            }
        }
    }
}
}

// ---------------------------------------------------------------------------------------------
// Batch normalization: the channels' sums in parallel (one task a channel, in f64 so the order of
// the sum hardly matters), then the elementwise passes sample by sample in parallel.

/// Channel `c`'s values, sample by sample, as slices (one value each for a flat input).
fn channel_slices<'a>(
    s: &'a BatchNormShape,
    x: &'a [f32],
    c: usize,
) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..s.batch).map(move |n| {
        let start = (n * s.channels + c) * s.spatial;
        &x[start..start + s.spatial]
    })
}

/// The sum of `f(a[i], b[i])` over two slices in 8 f32 lanes, so that no addition waits for the
/// one before (one f64 chain was latency-bound: 5 ms for a 128 x 32 x 26 x 26 batch), then in
/// f64 across lanes and slices: a slice is one sample's positions of a channel (at most a few
/// thousand values), whose f32 lane sums are good to ~1e-6 of their magnitude.
fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += f(x[k], y[k]);
        }
    }
    let mut total: f64 = acc.iter().map(|&v| v as f64).sum();
    for (&x, &y) in ra.iter().zip(rb) {
        total += f(x, y) as f64;
    }
    total
}

/// Every channel's batch mean and biased variance, into `stats` as `[mean[C], var[C]]`.
pub fn batchnorm_stats(s: &BatchNormShape, x: &[f32], stats: &mut [f32]) {
    let m = s.count() as f64;
    let per_channel: Vec<(f32, f32)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let sum: f64 = channel_slices(s, x, c)
                .map(|v| lane_sum(v, v, |a, _| a))
                .sum();
            let mean = (sum / m) as f32;
            let sq: f64 = channel_slices(s, x, c)
                .map(|v| lane_sum(v, v, |a, _| (a - mean) * (a - mean)))
                .sum();
            (mean, (sq / m) as f32)
        })
        .collect();
    let (means, vars) = stats.split_at_mut(s.channels);
    for (c, (mean, var)) in per_channel.into_iter().enumerate() {
        (means[c], vars[c]) = (mean, var);
    }
}

/// Move the running statistics towards the batch's `stats` (from [`batchnorm_stats`]), as
/// [`r::batchnorm_update_running`] does.
pub fn batchnorm_update_running(
    s: &BatchNormShape,
    stats: &[f32],
    run_mean: &mut [f32],
    run_var: &mut [f32],
) {
    let momentum = r::BN_MOMENTUM as f32;
    let m = s.count() as f64;
    let unbias = (m / (m - 1.0).max(1.0)) as f32;
    let (means, vars) = stats.split_at(s.channels);
    for c in 0..s.channels {
        run_mean[c] = (1.0 - momentum) * run_mean[c] + momentum * means[c];
        run_var[c] = (1.0 - momentum) * run_var[c] + momentum * vars[c] * unbias;
    }
}

/// `y = (x - mean) / sqrt(var + eps) * weight + bias`, with `stats` = `[mean[C], var[C]]`
/// (the batch's while training, the running ones at evaluation).
pub fn batchnorm_forward(
    s: &BatchNormShape,
    x: &[f32],
    weight: &[f32],
    bias: &[f32],
    stats: &[f32],
    y: &mut [f32],
) {
    let (means, vars) = stats.split_at(s.channels);
    let inv_std: Vec<f32> = vars
        .iter()
        .map(|&v| 1.0 / (v + r::BN_EPS as f32).sqrt())
        .collect();
    let len = s.channels * s.spatial;
    per_sample(len, s.batch, x, y, |x, y| {
        for c in 0..s.channels {
            let range = c * s.spatial..(c + 1) * s.spatial;
            for (y, &x) in y[range.clone()].iter_mut().zip(&x[range]) {
                *y = (x - means[c]) * inv_std[c] * weight[c] + bias[c];
            }
        }
    });
}

/// The gradients of the training pass with the batch `stats`: `d_weight`, `d_bias` and, when
/// given, `d_x`.
#[allow(clippy::too_many_arguments)]
pub fn batchnorm_backward(
    s: &BatchNormShape,
    x: &[f32],
    d_y: &[f32],
    weight: &[f32],
    stats: &[f32],
    d_x: Option<&mut [f32]>,
    d_weight: &mut [f32],
    d_bias: &mut [f32],
) {
    let (means, vars) = stats.split_at(s.channels);
    let inv_std: Vec<f32> = vars
        .iter()
        .map(|&v| 1.0 / (v + r::BN_EPS as f32).sqrt())
        .collect();
    let sums: Vec<(f32, f32)> = (0..s.channels)
        .into_par_iter()
        .map(|c| {
            let (mean, k) = (means[c], inv_std[c]);
            let (mut sum_dy, mut sum_dy_xhat) = (0.0f64, 0.0f64);
            for (x, dy) in channel_slices(s, x, c).zip(channel_slices(s, d_y, c)) {
                sum_dy += lane_sum(dy, dy, |g, _| g);
                sum_dy_xhat += lane_sum(x, dy, |x, g| g * ((x - mean) * k));
            }
            (sum_dy as f32, sum_dy_xhat as f32)
        })
        .collect();
    for (c, &(sum_dy, sum_dy_xhat)) in sums.iter().enumerate() {
        (d_bias[c], d_weight[c]) = (sum_dy, sum_dy_xhat);
    }
    let Some(d_x) = d_x else { return };
    let m = s.count() as f32;
    let len = s.channels * s.spatial;
    d_x[..s.batch * len]
        .par_chunks_mut(len)
        .zip(x.par_chunks(len).zip(d_y.par_chunks(len)))
        .for_each(|(dx, (x, dy))| {
            for c in 0..s.channels {
                let (mean, k, w) = (means[c], inv_std[c], weight[c]);
                let (mean_dy, mean_dy_xhat) = (d_bias[c] / m, d_weight[c] / m);
                let range = c * s.spatial..(c + 1) * s.spatial;
                for ((dx, &x), &dy) in dx[range.clone()]
                    .iter_mut()
                    .zip(&x[range.clone()])
                    .zip(&dy[range])
                {
                    let xhat = (x - mean) * k;
                    *dx = w * k * (dy - mean_dy - xhat * mean_dy_xhat);
                }
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Distance in units in the last place between `a` and the f32 nearest to `exact`.
    fn ulps(a: f32, exact: f64) -> u32 {
        let b = exact as f32;
        if a == b {
            return 0;
        }
        let key = |v: f32| {
            let i = v.to_bits() as i32;
            if i < 0 {
                i32::MIN - i
            } else {
                i
            }
        };
        key(a).abs_diff(key(b))
    }

    /// Every 97th f32 in [-20, 20] (both signs, and the extremes and NaN) against f64: tanh within
    /// 8 ulp of the correctly rounded value, sigmoid within 3 (or 1e-30 absolute where it
    /// underflows), exp within 2 in its range; measured here 7, 2 and 1. A coefficient off by 0.1%
    /// fails it (checked once).
    #[test]
    fn vectorised_transcendentals_are_within_a_few_ulp() {
        let mut xs: Vec<f32> = (0u32..u32::MAX / 97)
            .map(|i| f32::from_bits(i * 97))
            .filter(|x| x.is_finite() && x.abs() <= 20.0)
            .flat_map(|x| [x, -x])
            .collect();
        xs.extend([
            0.0,
            -0.0,
            88.0,
            -87.0,
            1e30,
            -1e30,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ]);
        let (mut worst_tanh, mut worst_sigmoid, mut worst_exp) = (0, 0, 0);
        for &x in &xs {
            let t = tanh_approx(x);
            worst_tanh = worst_tanh.max(ulps(t, (x as f64).tanh()));
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            let s = sigmoid_approx(x);
            if exact > 1e-30 {
                worst_sigmoid = worst_sigmoid.max(ulps(s, exact));
            } else {
                assert!((s as f64 - exact).abs() < 1e-30, "sigmoid({x}) = {s}");
            }
            if (-87.3..=88.3).contains(&x) {
                worst_exp = worst_exp.max(ulps(exp_approx(x), (x as f64).exp()));
            }
        }
        assert!(worst_tanh <= 8, "tanh: {worst_tanh} ulp");
        assert!(worst_sigmoid <= 3, "sigmoid: {worst_sigmoid} ulp");
        assert!(worst_exp <= 2, "exp: {worst_exp} ulp");
        // The vector sigmoid (AVX-512 where the CPU has it) on the same values.
        let mut ys = xs.clone();
        sigmoid_in_place(&mut ys);
        let mut worst_vector = 0;
        for (&x, &s) in xs.iter().zip(&ys) {
            let exact = 1.0 / (1.0 + (-(x as f64)).exp());
            if exact > 1e-30 {
                worst_vector = worst_vector.max(ulps(s, exact));
            } else {
                assert!(
                    (s as f64 - exact).abs() < 1e-30,
                    "vector sigmoid({x}) = {s}"
                );
            }
        }
        assert!(worst_vector <= 3, "vector sigmoid: {worst_vector} ulp");
        let mut nan = [f32::NAN; 17];
        sigmoid_in_place(&mut nan);
        assert!(
            nan.iter().all(|v| v.is_nan()),
            "vector sigmoid(NaN) = {nan:?}"
        );
        eprintln!("worst: vector sigmoid {worst_vector} ulp");
        assert!(tanh_approx(f32::NAN).is_nan() && sigmoid_approx(f32::NAN).is_nan());
        eprintln!("worst: tanh {worst_tanh} ulp, sigmoid {worst_sigmoid} ulp, exp {worst_exp} ulp");
    }

    /// The wide dense backward pass without an input gradient (a first layer, which the op and
    /// network tests never have) and with each optimizer, against the plain gradient and
    /// `Optimizer::update`; and its gradient alone, without a step. Column and output counts
    /// that leave every kind of strip and tile.
    #[test]
    fn wide_dense_backward_steps_as_the_optimizer_would() {
        let (batch, fin, fout) = (9, 250, 21);
        let s = DenseShape {
            batch,
            in_features: fin,
            out_features: fout,
        };
        let value = |i: usize, k: usize| ((i * k % 1000) as f32 - 500.0) / 500.0;
        let x: Vec<f32> = (0..batch * fin).map(|i| value(i, 7919)).collect();
        let d_y: Vec<f32> = (0..batch * fout).map(|i| value(i, 104_729)).collect();
        let w0: Vec<f32> = (0..fout * fin).map(|i| 0.1 * value(i, 1_299_709)).collect();
        let state: Vec<f32> = (0..fout * fin)
            .map(|i| 0.01 * value(i, 15_485_863).abs())
            .collect();
        let mut g = vec![0.0; fout * fin];
        for o in 0..fout {
            for j in 0..fin {
                g[o * fin + j] = (0..batch).map(|n| d_y[n * fout + o] * x[n * fin + j]).sum();
            }
        }
        // The kernel sums the 9 samples with fused multiply-adds, the plain loop without: a few
        // ulp of a gradient of order 1, carried through one optimizer step.
        let close = |what: &str, got: &[f32], want: &[f32]| {
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{what}[{i}]: {a} vs {b}"
                );
            }
        };
        // No input gradient: a first layer.
        let run = |w: &mut [f32], d_w: &mut [f32], d_b: Option<&mut [f32]>, u: Option<Update>| {
            dense_backward(&s, &x, &d_y, w, None, None, d_w, d_b, u)
        };
        // The gradient alone.
        let (mut w, mut d_w, mut d_b) = (w0.clone(), vec![0.0; fout * fin], vec![0.0; fout]);
        assert!(!run(&mut w, &mut d_w, Some(&mut d_b), None));
        close("gradient", &d_w, &g);
        let b_want: Vec<f32> = (0..fout)
            .map(|o| (0..batch).map(|n| d_y[n * fout + o]).sum())
            .collect();
        close("bias gradient", &d_b, &b_want);
        assert_eq!(w, w0, "no step without an optimizer");
        let optimizers = [
            Optimizer {
                weight_decay: 1e-3,
                ..Optimizer::sgd(0.1, 0.9)
            },
            Optimizer {
                kind: OptimizerKind::Adam,
                lr: 0.01,
                ..Optimizer::default()
            },
        ];
        for opt in optimizers {
            let (mut w, mut m, mut v) = (w0.clone(), state.clone(), state.clone());
            let mut d_w = vec![-7.0; fout * fin];
            let update = Update {
                opt,
                t: 3,
                first: &mut m,
                second: &mut v,
            };
            assert!(run(&mut w, &mut d_w, None, Some(update)));
            let (mut w_want, mut m_want, mut v_want) = (w0.clone(), state.clone(), state.clone());
            opt.update(3, &mut w_want, &g, &mut m_want, &mut v_want);
            close(&format!("{:?} weights", opt.kind), &w, &w_want);
            close(&format!("{:?} first moment", opt.kind), &m, &m_want);
            close(&format!("{:?} second moment", opt.kind), &v, &v_want);
            assert!(
                d_w.iter().all(|&d| d == -7.0),
                "the gradient is not stored when stepped"
            );
        }
    }
}
