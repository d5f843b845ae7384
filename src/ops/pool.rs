//! Max and average pooling: `max_pool2d_*`, `avg_pool2d_*`. WGSL twin: `shaders/pool.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

use super::cast;

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
