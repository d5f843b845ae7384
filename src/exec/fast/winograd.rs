//! Winograd's minimal filtering for 3x3, stride-1 convolutions, used by the fast CPU executor
//! ([`crate::exec::fast`]) for all three passes of such a layer (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2015).
//!
//! F(2x2, 3x3) computes a 2x2 block of outputs from a 4x4 patch of input with 16 multiplications
//! instead of 36: transform the patch (`V = Bᵀ d B`) and the filter (`U = G g Gᵀ`), multiply them
//! point by point, transform back (`Y = Aᵀ (U ⊙ V) A`). Summed over input channels, the point-wise
//! products become 16 independent matrix products, `M[p] = U[p] · V[p]` for the 16 points `p`,
//! which a matrix-product kernel does at full speed: 2.25x fewer multiplications than im2col +
//! SGEMM.
//!
//! - Forward: `V` of every input tile, `M[p] = U[p] (out x in) · V[p] (in x tiles)`, then `Aᵀ M A`.
//! - Input gradient: the same, on the output gradient padded by `2 - padding`, with each filter
//!   rotated 180° and the channel axes swapped (a transposed convolution is a convolution).
//! - Weight gradient: F(3x3, 2x2) with the output gradient as the "filter": the 4x4 input tiles are
//!   those of the forward pass (so its `V` is reused), the 2x2 gradient tiles are transformed by
//!   `G₂`, `M[p] = Σ_tiles Ĝ[p] (out x tiles) · V[p]ᵀ (tiles x in)`, and `dW = A₂ᵀ M A₂`.
//!
//! Matrices (rows; the forward ones are the paper's):
//! - `Bᵀ = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]`
//! - `G  = [1 0 0; ½ ½ ½; ½ -½ ½; 0 0 1]`, `Aᵀ = [1 1 1 0; 0 1 -1 -1]`
//! - `G₂ = [1 0; ½ ½; ½ -½; 0 -1]`, `A₂ᵀ = [1 1 1 0; 0 1 -1 0; 0 1 1 1]`
//!
//! F(3x3, 2x2) is derived by Toom-Cook at the points 0, 1, -1, ∞ and transposed; its `Bᵀ` would
//! differ from the forward one only by the sign of the last row, which `G₂`'s last row absorbs,
//! so both passes share `V`. All of it is checked against the reference's plain loops in
//! `tests/ops/conv2d.rs`. In f32 the transforms add rounding of a few ULP of the largest partial
//! sums; F(2x2, 3x3) is the variant with the smallest error (larger tiles amplify it).
//!
//! Layouts (row-major; tiles numbered `ty * (tiles_x + 1) + tx` over a [`Grid`] with one spare
//! tile per row, rows of tiles padded to a multiple of 16): `V`, `M` and the input-gradient
//! tensors are `[16][channels][tiles]`; `U` is `[16][out][in]` (`[16][in][out]` for the input
//! gradient); the transformed output gradient is `[16][tiles][out]` (computed channel by channel,
//! then transposed). Every product is then [`gemm`]'s `c = a · b` with a row of `b` as a vector,
//! so nothing is packed.
//!
//! The transforms and the product are compiled for AVX-512, AVX2+FMA and plain targets
//! (`multiversion!`, [`Isa`]) and the best the CPU has is used; `WGCNN_CPU_ISA` caps it.

use crate::ops::Conv2dShape;

/// Define `$name` as a function compiled three times (AVX-512, AVX2+FMA, plain) and dispatched on
/// the CPU's features at run time ([`Isa::detect`], cached): loops written plainly then vectorise
/// to the widest registers the machine has. The body may use `FMA`, a constant that says whether
/// this variant has fused multiply-adds (see [`madd`]), and `WIDE`, whether it has 32 vector
/// registers of 16 floats (AVX-512: room for larger register blocks than AVX2's 16 of 8).
macro_rules! multiversion {
    ($(#[$m:meta])* pub fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        pub fn $name($($arg: $ty),*) {
            #[inline(always)]
            #[allow(unused)]
            fn imp<const FMA: bool, const WIDE: bool>($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,fma")]
            fn avx512($($arg: $ty),*) {
                imp::<true, true>($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            fn avx2($($arg: $ty),*) {
                imp::<true, false>($($arg),*)
            }
            match $crate::exec::fast::winograd::Isa::detect() {
                // SAFETY: `detect` found the features these functions are compiled for.
                #[cfg(target_arch = "x86_64")]
                $crate::exec::fast::winograd::Isa::Avx512 => unsafe { avx512($($arg),*) },
                #[cfg(target_arch = "x86_64")]
                $crate::exec::fast::winograd::Isa::Avx2Fma => unsafe { avx2($($arg),*) },
                _ => imp::<{ cfg!(target_arch = "aarch64") }, false>($($arg),*),
            }
        }
    };
}
pub(crate) use multiversion;

/// `a * b + c`, fused where the variant has fused multiply-adds (`FMA`; elsewhere `mul_add` would
/// be a slow library call).
#[inline(always)]
pub fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        c + a * b
    }
}

/// Points of a 4x4 tile: the number of matrix products per pass.
pub const POINTS: usize = 16;

/// Whether a convolution can use these transforms: 3x3 kernel, stride 1, padding at most 2 (the
/// input gradient pads the output gradient by `2 - padding`). Layers with fewer than 4 input
/// channels (a first layer on grey images) have too little to sum over for Winograd to pay.
pub fn applies(s: &Conv2dShape) -> bool {
    s.kernel_size == 3 && s.stride == 1 && s.padding <= 2 && s.in_channels >= 4
}

/// The 2x2 output tiles covering an `h x w` output, numbered `ty * row + tx`. Each row of tiles
/// has one spare tile past the edge (`row = tiles_x + 1`): with it, tile `t + 1` is always the
/// tile to the right and `t + row` the one below, so every transform is a handful of flat loops
/// over all tiles (which vectorise) instead of short loops over one row. Spare tiles compute
/// nothing useful and are never read back; the output gradient is zero there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub tiles_y: usize,
    pub tiles_x: usize,
}

impl Grid {
    pub fn new(h: usize, w: usize) -> Grid {
        Grid {
            tiles_y: h.div_ceil(2),
            tiles_x: w.div_ceil(2),
        }
    }

    /// Tiles per row, the spare one included.
    pub fn row(&self) -> usize {
        self.tiles_x + 1
    }

    /// Tiles, spare ones included.
    pub fn len(&self) -> usize {
        self.tiles_y * self.row()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row length of a `[channels][tiles]` matrix: the tile count rounded up to whole vectors.
    pub fn padded(&self) -> usize {
        self.len().next_multiple_of(16)
    }

    /// Scratch floats [`gradient_transform`] needs for `channels` channels.
    pub fn gradient_scratch(&self, channels: usize) -> usize {
        (POINTS * channels + 6) * self.len()
    }

    /// Scratch floats the other transforms need.
    pub fn scratch(&self) -> usize {
        16 * (self.tiles_y + 1) * self.row() + 16
    }
}

/// `U[p][o][i] = (G g Gᵀ)[p]` for each 3x3 filter `g = weight[o, i]` (PyTorch layout
/// `[out][in][3][3]`). With `for_input_grad`, the filters of the transposed convolution instead:
/// `g = rot180(weight[o, i])` stored at `U[p][i][o]`.
pub fn transform_weights(
    out_c: usize,
    in_c: usize,
    weight: &[f32],
    for_input_grad: bool,
    u: &mut [f32],
) {
    let plane = out_c * in_c;
    for o in 0..out_c {
        for i in 0..in_c {
            let w = &weight[(o * in_c + i) * 9..][..9];
            let g: [[f32; 3]; 3] = std::array::from_fn(|y| {
                std::array::from_fn(|x| {
                    if for_input_grad {
                        w[(2 - y) * 3 + (2 - x)]
                    } else {
                        w[y * 3 + x]
                    }
                })
            });
            // G g (4x3), then (G g) Gᵀ (4x4).
            let gg: [[f32; 3]; 4] = std::array::from_fn(|r| {
                std::array::from_fn(|x| match r {
                    0 => g[0][x],
                    1 => 0.5 * (g[0][x] + g[1][x] + g[2][x]),
                    2 => 0.5 * (g[0][x] - g[1][x] + g[2][x]),
                    _ => g[2][x],
                })
            });
            let at = if for_input_grad {
                i * out_c + o
            } else {
                o * in_c + i
            };
            for (r, row) in gg.iter().enumerate() {
                let t = [
                    row[0],
                    0.5 * (row[0] + row[1] + row[2]),
                    0.5 * (row[0] - row[1] + row[2]),
                    row[2],
                ];
                for (c, v) in t.into_iter().enumerate() {
                    u[(r * 4 + c) * plane + at] = v;
                }
            }
        }
    }
}

multiversion! {
/// `v[p][c][t] = (Bᵀ d B)[p]` for each channel `c` of one sample `x` (`[channels][h][w]`) and each
/// tile `t = (ty, tx)` of `grid`, where `d` is the 4x4 patch of `x[c]` at row `2 ty - pad`,
/// column `2 tx - pad`, zero outside the image. Rows of `v` are `grid.padded()` long; `scratch`
/// holds `grid.scratch()` floats.
pub fn input_transform(
    channels: usize,
    size: (usize, usize),
    pad: usize,
    grid: Grid,
    x: &[f32],
    v: &mut [f32],
    scratch: &mut [f32],
) {
    let (h, w) = size;
    let (row, tiles, tp) = (grid.row(), grid.len(), grid.padded());
    let plane = channels * tp;
    // The zero-padded image split by the parity of its rows and columns: `parts[2 * ry + rx][a *
    // row + b]` is padded pixel (2a + ry, 2b + rx), so patch pixel (r, x) of tile t is
    // parts[2 (r % 2) + x % 2][t + (r / 2) row + x / 2].
    let n = (grid.tiles_y + 1) * row + 1;
    let (parts, rest) = scratch.split_at_mut(4 * n);
    let cols = &mut rest[..8 * n];
    for c in 0..channels {
        let xc = &x[c * h * w..][..h * w];
        parts.fill(0.0);
        for (yi, src) in xc.chunks_exact(w).enumerate() {
            // Pixel xi goes to column parity (xi + pad) % 2, index (xi + pad) / 2: deinterleave
            // the row's pairs (a loop that vectorises) into the two column-parity parts.
            let yy = yi + pad;
            let at = |rx: usize| (2 * (yy % 2) + rx) * n + (yy / 2) * row;
            let (first, second) = (at(pad % 2) + pad / 2, at((pad + 1) % 2) + pad.div_ceil(2));
            let pairs = w / 2;
            let (lo, hi) = parts.split_at_mut(first.max(second));
            let (d0, d1) = if first < second {
                (&mut lo[first..][..pairs + 1], &mut hi[..pairs])
            } else {
                (&mut hi[..pairs + 1], &mut lo[second..][..pairs])
            };
            for ((pair, a), b) in src.chunks_exact(2).zip(d0.iter_mut()).zip(d1.iter_mut()) {
                *a = pair[0];
                *b = pair[1];
            }
            if w % 2 == 1 {
                d0[pairs] = src[w - 1];
            }
        }
        // d B along each patch row, for even (ry = 0) and odd (ry = 1) padded rows:
        // cols[4 ry + j][t] = (d B)[row of parity ry][j] of the tile starting at t.
        for ry in 0..2 {
            let (e, o) = (&parts[2 * ry * n..][..n], &parts[(2 * ry + 1) * n..][..n]);
            let out = &mut cols[4 * ry * n..][..4 * n];
            let (c0, rest) = out.split_at_mut(n);
            let (c1, rest) = rest.split_at_mut(n);
            let (c2, c3) = rest.split_at_mut(n);
            for t in 0..n - 1 {
                let (d0, d1, d2, d3) = (e[t], o[t], e[t + 1], o[t + 1]);
                c0[t] = d0 - d2;
                c1[t] = d1 + d2;
                c2[t] = d2 - d1;
                c3[t] = d1 - d3;
            }
        }
        // Then Bᵀ across the 4 patch rows (even, odd, even one tile-row down, odd one down).
        for j in 0..4 {
            let (ce, co) = (&cols[j * n..][..n], &cols[(4 + j) * n..][..n]);
            let (r0, r1) = (&ce[..tiles], &co[..tiles]);
            let (r2, r3) = (&ce[row..row + tiles], &co[row..row + tiles]);
            let at = |i: usize| (i * 4 + j) * plane + c * tp;
            sub(&mut v[at(0)..][..tiles], r0, r2);
            add(&mut v[at(1)..][..tiles], r1, r2);
            sub(&mut v[at(2)..][..tiles], r2, r1);
            sub(&mut v[at(3)..][..tiles], r1, r3);
        }
    }
}
}

/// `out = a - b`, element by element.
#[inline(always)]
fn sub(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a - b;
    }
}

/// `out = a + b`, element by element.
#[inline(always)]
fn add(out: &mut [f32], a: &[f32], b: &[f32]) {
    for ((o, a), b) in out.iter_mut().zip(a).zip(b) {
        *o = a + b;
    }
}

multiversion! {
/// `y[c] = Aᵀ m A` tile by tile for one sample (`m` is `[16][channels][tiles]`, rows
/// `grid.padded()` long), plus `bias[c]`, into `y` (`[channels][h][w]`); the parts of edge tiles
/// beyond `h x w` are dropped. `scratch` holds `grid.scratch()` floats.
pub fn output_transform(
    channels: usize,
    size: (usize, usize),
    grid: Grid,
    m: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    scratch: &mut [f32],
) {
    let (h, w) = size;
    let (row, tiles, tp) = (grid.row(), grid.len(), grid.padded());
    let plane = channels * tp;
    let (s, rest) = scratch.split_at_mut(8 * tiles);
    let (even, odd) = rest[..2 * tiles].split_at_mut(tiles);
    for c in 0..channels {
        let b = bias.map_or(0.0, |b| b[c]);
        let p = |i: usize| &m[i * plane + c * tp..][..tiles];
        // s = Aᵀ m (2x4): s[r * 4 + j] = row r of Aᵀ times column j of each tile.
        for j in 0..4 {
            let (s0, s1) = s.split_at_mut(4 * tiles);
            let (s0, s1) = (&mut s0[j * tiles..][..tiles], &mut s1[j * tiles..][..tiles]);
            let (m0, m1, m2, m3) = (p(j), p(4 + j), p(8 + j), p(12 + j));
            for (((((s0, s1), m0), m1), m2), m3) in
                s0.iter_mut().zip(s1).zip(m0).zip(m1).zip(m2).zip(m3)
            {
                *s0 = m0 + m1 + m2;
                *s1 = m1 - m2 - m3;
            }
        }
        // Then s A (2x2), interleaving each tile's two columns.
        for r in 0..2 {
            let sr = |j: usize| &s[(r * 4 + j) * tiles..][..tiles];
            let (s0, s1, s2, s3) = (sr(0), sr(1), sr(2), sr(3));
            for (((((e, o), s0), s1), s2), s3) in even
                .iter_mut()
                .zip(odd.iter_mut())
                .zip(s0)
                .zip(s1)
                .zip(s2)
                .zip(s3)
            {
                *e = s0 + s1 + s2 + b;
                *o = s1 - s2 - s3 + b;
            }
            // Output row 2 ty + r: tile ty * row + tx gives its columns 2 tx and 2 tx + 1
            // (written in place: a short copy per row would cost a call to memcpy).
            let yc = &mut y[c * h * w..][..h * w];
            for (ty, dst) in yc.chunks_exact_mut(w).skip(r).step_by(2).enumerate() {
                let (e, o) = (&even[ty * row..][..row], &odd[ty * row..][..row]);
                let mut pairs = dst.chunks_exact_mut(2);
                for (pair, (e, o)) in (&mut pairs).zip(e.iter().zip(o)) {
                    pair[0] = *e;
                    pair[1] = *o;
                }
                if let [last] = pairs.into_remainder() {
                    *last = e[w / 2];
                }
            }
        }
    }
}
}

multiversion! {
/// `g[p][t][c] = (G₂ e G₂ᵀ)[p]` for each channel of one sample's output gradient `dy`
/// (`[channels][h][w]`) and each 2x2 tile `e` of `grid` at `(2 ty, 2 tx)`, zero beyond the edge
/// and on spare tiles. Channels are the fastest axis of `g` (see [`gemm`]'s use in the weight
/// gradient), so the transform runs channel by channel over all tiles (flat loops) into
/// `scratch`, which is then transposed into `g`. `scratch` holds [`Grid::gradient_scratch`]
/// floats.
pub fn gradient_transform(
    channels: usize,
    size: (usize, usize),
    grid: Grid,
    dy: &[f32],
    g: &mut [f32],
    scratch: &mut [f32],
) {
    let (h, w) = size;
    let (row, tiles) = (grid.row(), grid.len());
    // gt[p][c][t], then the four pixels of every tile, then one row of G₂ e.
    let (gt, rest) = scratch.split_at_mut(POINTS * channels * tiles);
    let (e, rest) = rest.split_at_mut(4 * tiles);
    let (x0, x1) = rest[..2 * tiles].split_at_mut(tiles);
    for c in 0..channels {
        // e[2 ry + rx][ty row + tx] = dy[c][2 ty + ry][2 tx + rx] (zero beyond the edge).
        e.fill(0.0);
        for (yi, src) in dy[c * h * w..][..h * w].chunks_exact(w).enumerate() {
            let at = (yi / 2) * row;
            let (left, right) = e[2 * (yi % 2) * tiles..][..2 * tiles].split_at_mut(tiles);
            let (left, right) = (&mut left[at..], &mut right[at..]);
            for ((pair, l), r) in src.chunks_exact(2).zip(left.iter_mut()).zip(right.iter_mut()) {
                *l = pair[0];
                *r = pair[1];
            }
            if w % 2 == 1 {
                left[w / 2] = src[w - 1];
            }
        }
        let (a, rest) = e.split_at(tiles);
        let (b, rest) = rest.split_at(tiles);
        let (cc, d) = rest.split_at(tiles);
        let mut out = gt
            .chunks_exact_mut(channels * tiles)
            .map(|plane| &mut plane[c * tiles..][..tiles]);
        let mut out: [&mut [f32]; POINTS] = std::array::from_fn(|_| out.next().unwrap());
        // Rows i of G₂ e: [a b], [(a+c)/2 (b+d)/2], [(a-c)/2 (b-d)/2], [-c -d]; then each row
        // (x0, x1) times G₂ᵀ: [x0, (x0+x1)/2, (x0-x1)/2, -x1] at points 4 i + j.
        for i in 0..4 {
            // (One loop per row of G₂ rather than a `match` inside one loop, which did not
            // vectorise: the transform cost more than the weight gradient's products.)
            let rows = x0.iter_mut().zip(x1.iter_mut());
            let inputs = a.iter().zip(b).zip(cc.iter().zip(d));
            match i {
                0 => {
                    x0.copy_from_slice(a);
                    x1.copy_from_slice(b);
                }
                1 => {
                    for ((x0, x1), ((&a, &b), (&c, &d))) in rows.zip(inputs) {
                        (*x0, *x1) = (0.5 * (a + c), 0.5 * (b + d));
                    }
                }
                2 => {
                    for ((x0, x1), ((&a, &b), (&c, &d))) in rows.zip(inputs) {
                        (*x0, *x1) = (0.5 * (a - c), 0.5 * (b - d));
                    }
                }
                _ => {
                    for ((x0, x1), (_, (&c, &d))) in rows.zip(inputs) {
                        (*x0, *x1) = (-c, -d);
                    }
                }
            }
            let [o0, o1, o2, o3] = &mut out[4 * i..4 * i + 4] else {
                unreachable!()
            };
            for ((((o0, o1), o2), o3), (&x0, &x1)) in o0
                .iter_mut()
                .zip(o1.iter_mut())
                .zip(o2.iter_mut())
                .zip(o3.iter_mut())
                .zip(x0.iter().zip(x1.iter()))
            {
                *o0 = x0;
                *o1 = 0.5 * (x0 + x1);
                *o2 = 0.5 * (x0 - x1);
                *o3 = -x1;
            }
        }
    }
    for (src, dst) in gt
        .chunks_exact(channels * tiles)
        .zip(g.chunks_exact_mut(tiles * channels))
    {
        transpose(src, channels, tiles, dst);
    }
}
}

/// `dst[j][i] = src[i][j]` for a `rows x cols` row-major `src`, in 16 x 16 blocks (with
/// AVX-512, whole blocks in registers: sixteen loads, 64 shuffles, sixteen stores; with AVX2,
/// four 8 x 8 blocks in registers).
pub fn transpose(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
    transpose_strided(src, cols, rows, cols, dst, rows);
}

/// [`transpose`] of a `rows x cols` block of a matrix with row stride `src_stride` into one of
/// row stride `dst_stride`: `dst[j * dst_stride + i] = src[i * src_stride + j]`.
pub fn transpose_strided(
    src: &[f32],
    src_stride: usize,
    rows: usize,
    cols: usize,
    dst: &mut [f32],
    dst_stride: usize,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        cols <= src_stride && rows <= dst_stride,
        "transpose: rows overlap"
    );
    let (src, dst) = (
        &src[..(rows - 1) * src_stride + cols],
        &mut dst[..(cols - 1) * dst_stride + rows],
    );
    #[cfg(target_arch = "x86_64")]
    let isa = Isa::detect();
    for i0 in (0..rows).step_by(16) {
        for j0 in (0..cols).step_by(16) {
            #[cfg(target_arch = "x86_64")]
            if isa != Isa::Portable && i0 + 16 <= rows && j0 + 16 <= cols {
                // SAFETY: the CPU has the instruction set (AVX-512F, or AVX2 for the 8 x 8
                // blocks); the block's 16 rows of 16 floats lie inside `src` (i0 + 16 <= rows,
                // j0 + 16 <= cols) and inside `dst` likewise.
                unsafe {
                    let (s, d) = (
                        src.as_ptr().add(i0 * src_stride + j0),
                        dst.as_mut_ptr().add(j0 * dst_stride + i0),
                    );
                    if isa == Isa::Avx512 {
                        transpose16_avx512(s, src_stride, d, dst_stride);
                    } else {
                        for (bi, bj) in [(0, 0), (0, 8), (8, 0), (8, 8)] {
                            transpose8_avx2(
                                s.add(bi * src_stride + bj),
                                src_stride,
                                d.add(bj * dst_stride + bi),
                                dst_stride,
                            );
                        }
                    }
                };
                continue;
            }
            for i in i0..(i0 + 16).min(rows) {
                for j in j0..(j0 + 16).min(cols) {
                    dst[j * dst_stride + i] = src[i * src_stride + j];
                }
            }
        }
    }
}

/// One 8 x 8 block: rows interleaved by 32 bits, then 64, then the 128-bit halves exchanged.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose8_avx2(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
    let mut t = [_mm256_setzero_ps(); 8];
    for k in 0..4 {
        t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [_mm256_setzero_ps(); 8];
    for k in 0..2 {
        u[4 * k] = _mm256_shuffle_ps::<0x44>(t[4 * k], t[4 * k + 2]);
        u[4 * k + 1] = _mm256_shuffle_ps::<0xee>(t[4 * k], t[4 * k + 2]);
        u[4 * k + 2] = _mm256_shuffle_ps::<0x44>(t[4 * k + 1], t[4 * k + 3]);
        u[4 * k + 3] = _mm256_shuffle_ps::<0xee>(t[4 * k + 1], t[4 * k + 3]);
    }
    for j in 0..4 {
        _mm256_storeu_ps(
            dst.add(j * dst_stride),
            _mm256_permute2f128_ps::<0x20>(u[j], u[4 + j]),
        );
        _mm256_storeu_ps(
            dst.add((4 + j) * dst_stride),
            _mm256_permute2f128_ps::<0x31>(u[j], u[4 + j]),
        );
    }
}

/// One 16 x 16 block: rows interleaved by 32 bits, then 64, then 128-bit lanes twice; output row
/// `i` is then column `i` of the block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16_avx512(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_ps(); 16];
    for (i, r) in r.iter_mut().enumerate() {
        *r = _mm512_loadu_ps(src.add(i * src_stride));
    }
    let mut t = [_mm512_setzero_ps(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [_mm512_setzero_ps(); 16];
    for k in 0..4 {
        let pd = |x: __m512| _mm512_castps_pd(x);
        u[4 * k] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * k]), pd(t[4 * k + 2])));
        u[4 * k + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * k]), pd(t[4 * k + 2])));
        u[4 * k + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(pd(t[4 * k + 1]), pd(t[4 * k + 3])));
        u[4 * k + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(pd(t[4 * k + 1]), pd(t[4 * k + 3])));
    }
    let mut v = [_mm512_setzero_ps(); 16];
    for k in 0..2 {
        for j in 0..4 {
            v[8 * k + j] = _mm512_shuffle_f32x4::<0x88>(u[8 * k + j], u[8 * k + 4 + j]);
            v[8 * k + 4 + j] = _mm512_shuffle_f32x4::<0xdd>(u[8 * k + j], u[8 * k + 4 + j]);
        }
    }
    for j in 0..8 {
        let lo = _mm512_shuffle_f32x4::<0x88>(v[j], v[8 + j]);
        let hi = _mm512_shuffle_f32x4::<0xdd>(v[j], v[8 + j]);
        _mm512_storeu_ps(dst.add(j * dst_stride), lo);
        _mm512_storeu_ps(dst.add((8 + j) * dst_stride), hi);
    }
}

/// `d_weight[o][i] = A₂ᵀ m A₂` (3x3) from the summed products `m` (`[16][in][out]`).
pub fn weight_gradient_transform(out_c: usize, in_c: usize, m: &[f32], d_weight: &mut [f32]) {
    let plane = out_c * in_c;
    for o in 0..out_c {
        for i in 0..in_c {
            let at = i * out_c + o;
            let mm: [[f32; 4]; 4] =
                std::array::from_fn(|r| std::array::from_fn(|j| m[(r * 4 + j) * plane + at]));
            // A₂ᵀ m (3x4), then (A₂ᵀ m) A₂ (3x3).
            let s: [[f32; 4]; 3] = std::array::from_fn(|r| {
                std::array::from_fn(|j| match r {
                    0 => mm[0][j] + mm[1][j] + mm[2][j],
                    1 => mm[1][j] - mm[2][j],
                    _ => mm[1][j] + mm[2][j] + mm[3][j],
                })
            });
            let dw = &mut d_weight[(o * in_c + i) * 9..][..9];
            for (r, row) in s.iter().enumerate() {
                dw[r * 3] = row[0] + row[1] + row[2];
                dw[r * 3 + 1] = row[1] - row[2];
                dw[r * 3 + 2] = row[1] + row[2] + row[3];
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix product
// ---------------------------------------------------------------------------------------------

/// `c[r][j] = a[r] · b[..][j]` (or `+=` with `accumulate`) for `r < rows`, `j < cols`, summing
/// over `inner`; `a`, `b` and `c` are row-major with row strides `lda`, `ldb`, `ldc`.
///
/// A register block of rows of `c` (a vector or two of columns wide) is accumulated over the
/// whole inner dimension: each step loads one row segment of `b` and broadcasts one element of
/// `a` per row. With `b` a few KiB (a Winograd point's `V` or `U`), nothing needs packing. The
/// same code is compiled for AVX-512, AVX2+FMA and plain targets and chosen at run time.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    let isa = Isa::detect();
    gemm_with(isa, rows, inner, cols, a, lda, b, ldb, c, ldc, accumulate);
}

/// The instruction sets [`gemm`] is compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

impl Isa {
    /// The best this CPU has, or less if the environment variable `WGCNN_CPU_ISA` asks for
    /// less (`avx2` or `portable`; to check those code paths, or to match another machine's
    /// rounding). Read once.
    pub fn detect() -> Isa {
        static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *ISA.get_or_init(|| {
            let best = Isa::best();
            match std::env::var("WGCNN_CPU_ISA").as_deref() {
                Ok("portable") => Isa::Portable,
                Ok("avx2") if best != Isa::Portable => Isa::Avx2Fma,
                _ => best,
            }
        })
    }

    fn best() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma") {
                return Isa::Avx512;
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Isa::Avx2Fma;
            }
        }
        Isa::Portable
    }

    /// Every variant this CPU can run (for tests).
    pub fn available() -> Vec<Isa> {
        match Isa::best() {
            Isa::Avx512 => vec![Isa::Avx512, Isa::Avx2Fma, Isa::Portable],
            Isa::Avx2Fma => vec![Isa::Avx2Fma, Isa::Portable],
            Isa::Portable => vec![Isa::Portable],
        }
    }
}

/// [`gemm`] with a chosen instruction set; panics if the CPU lacks it.
#[allow(clippy::too_many_arguments)]
pub fn gemm_with(
    isa: Isa,
    rows: usize,
    inner: usize,
    cols: usize,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
    accumulate: bool,
) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(
        a.len() >= (rows - 1) * lda + inner
            && (inner == 0 || b.len() >= (inner - 1) * ldb + cols)
            && c.len() >= (rows - 1) * ldc + cols
            && inner <= lda
            && cols <= ldc,
        "gemm operands too short"
    );
    let args = Args {
        rows,
        inner,
        cols,
        lda,
        ldb,
        ldc,
        accumulate,
    };
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            assert!(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("fma"));
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            unsafe { gemm_avx512(&args, a, b, c) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => {
            assert!(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"));
            // SAFETY: as above.
            unsafe { gemm_avx2(&args, a, b, c) }
        }
        _ => gemm_blocks::<16, 4, { cfg!(target_arch = "aarch64") }>(&args, a, b, c),
    }
}

struct Args {
    rows: usize,
    inner: usize,
    cols: usize,
    lda: usize,
    ldb: usize,
    ldc: usize,
    accumulate: bool,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
fn gemm_avx512(args: &Args, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_blocks::<32, 8, true>(args, a, b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(args: &Args, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm_blocks::<16, 4, true>(args, a, b, c)
}

/// Columns in blocks of `L`, then 16, then one at a time; rows in blocks of `R`, then one.
/// `FMA`: fused multiply-adds (only where the target has them; otherwise `mul_add` would be a
/// slow library call).
#[inline(always)]
fn gemm_blocks<const L: usize, const R: usize, const FMA: bool>(
    args: &Args,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let mut j = 0;
    while j + L <= args.cols {
        column_block::<L, R, FMA>(args, j, a, b, c);
        j += L;
    }
    while j + 16 <= args.cols {
        column_block::<16, R, FMA>(args, j, a, b, c);
        j += 16;
    }
    while j < args.cols {
        column_block::<1, R, FMA>(args, j, a, b, c);
        j += 1;
    }
}

#[inline(always)]
fn column_block<const L: usize, const R: usize, const FMA: bool>(
    args: &Args,
    j: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let mut r = 0;
    while r + R <= args.rows {
        tile::<L, R, FMA>(args, r, j, a, b, c);
        r += R;
    }
    while r < args.rows {
        tile::<L, 1, FMA>(args, r, j, a, b, c);
        r += 1;
    }
}

/// `c[r0..r0 + R][j0..j0 + L]`, accumulated in registers over the inner dimension.
#[inline(always)]
fn tile<const L: usize, const R: usize, const FMA: bool>(
    args: &Args,
    r0: usize,
    j0: usize,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
) {
    let inner = args.inner;
    // Row r of this block of `a`, and row i of `b` from column j0, by pointer: indexing slices
    // here put five bounds checks in the inner loop, as many instructions as the multiply-adds.
    assert!(
        r0 + R <= args.rows
            && j0 + L <= args.cols
            && a.len() >= (r0 + R - 1) * args.lda + inner
            && (inner == 0 || b.len() >= (inner - 1) * args.ldb + j0 + L)
    );
    let a_rows: [*const f32; R] = std::array::from_fn(|r| a[(r0 + r) * args.lda..].as_ptr());
    let mut acc = [[0.0f32; L]; R];
    if args.accumulate {
        for (r, acc) in acc.iter_mut().enumerate() {
            acc.copy_from_slice(&c[(r0 + r) * args.ldc + j0..][..L]);
        }
    }
    let mut b_row = b[j0..].as_ptr();
    for i in 0..inner {
        // SAFETY: i < inner, so a_rows[r] + i lies in row r0 + r of `a` (asserted above), and
        // b_row + L = b + i ldb + j0 + L <= b + (inner - 1) ldb + j0 + L <= b.len().
        let bv: &[f32; L] = unsafe { &*(b_row as *const [f32; L]) };
        for (acc, a_row) in acc.iter_mut().zip(&a_rows) {
            let av = unsafe { *a_row.add(i) };
            for (s, &bv) in acc.iter_mut().zip(bv) {
                *s = madd::<FMA>(av, bv, *s);
            }
        }
        b_row = b_row.wrapping_add(args.ldb);
    }
    for (r, acc) in acc.iter().enumerate() {
        c[(r0 + r) * args.ldc + j0..][..L].copy_from_slice(acc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`transpose_strided`] on a block of a wider matrix into a wider one.
    #[test]
    fn transpose_strided_matches_the_definition() {
        // A 33 x 40 block at column 7 of a 33 x 50 matrix, into rows of 37 (whole and partial
        // 16 x 16 blocks, both strides wider than the block).
        let (rows, cols, src_stride, dst_stride) = (33, 40, 50, 37);
        let src: Vec<f32> = (0..rows * src_stride).map(|i| i as f32).collect();
        let mut dst = vec![-1.0; cols * dst_stride];
        transpose_strided(&src[7..], src_stride, rows, cols, &mut dst, dst_stride);
        for j in 0..cols {
            for i in 0..dst_stride {
                let want = if i < rows {
                    src[7 + i * src_stride + j]
                } else {
                    -1.0
                };
                assert_eq!(dst[j * dst_stride + i], want, "at ({i}, {j})");
            }
        }
    }

    /// The blocked (and, where the CPU has it, AVX-512) transpose against the definition, on
    /// sizes with whole and partial 16 x 16 blocks.
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(16, 16), (64, 156), (17, 33), (1, 5), (32, 16)] {
            let src: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
            let mut dst = vec![-1.0; rows * cols];
            transpose(&src, rows, cols, &mut dst);
            for i in 0..rows {
                for j in 0..cols {
                    assert_eq!(
                        dst[j * rows + i],
                        src[i * cols + j],
                        "{rows}x{cols} at ({i}, {j})"
                    );
                }
            }
        }
    }

    /// Every compiled variant of the product against the plain triple loop, on sizes that leave
    /// every kind of remainder (rows of the register block, 16- and 1-wide columns).
    #[test]
    fn gemm_matches_the_triple_loop() {
        let value = |i: usize| ((i * 7919 % 1000) as f32 - 500.0) / 500.0;
        for isa in Isa::available() {
            for &(rows, inner, cols) in
                &[(1, 1, 1), (9, 5, 47), (64, 32, 144), (17, 3, 16), (3, 0, 5)]
            {
                for accumulate in [false, true] {
                    let (lda, ldb, ldc) = (inner + 1, cols + 3, cols + 2);
                    let a: Vec<f32> = (0..rows * lda).map(value).collect();
                    let b: Vec<f32> = (0..inner.max(1) * ldb).map(|i| value(i + 3)).collect();
                    let c0: Vec<f32> = (0..rows * ldc).map(|i| value(i + 5)).collect();
                    let mut c = c0.clone();
                    gemm_with(
                        isa, rows, inner, cols, &a, lda, &b, ldb, &mut c, ldc, accumulate,
                    );
                    for r in 0..rows {
                        for j in 0..ldc {
                            let expected = if j >= cols {
                                c0[r * ldc + j] // outside the product: untouched
                            } else {
                                let dot: f32 =
                                    (0..inner).map(|i| a[r * lda + i] * b[i * ldb + j]).sum();
                                dot + if accumulate { c0[r * ldc + j] } else { 0.0 }
                            };
                            let got = c[r * ldc + j];
                            // Inner sizes <= 32 of values <= 1, summed in another order (and with
                            // fused multiply-adds): a few ULP of the magnitude, far below 1e-5.
                            assert!(
                                (got - expected).abs() <= 1e-5 * (1.0 + expected.abs()),
                                "{isa:?} {rows}x{inner}x{cols} acc {accumulate}: c[{r}][{j}] = {got}, expected {expected}"
                            );
                        }
                    }
                }
            }
        }
    }
}
