//! 2-D convolution: `conv2d_forward`, `conv2d_backward_input`, `conv2d_backward_weight` (and the
//! bias gradient with it). WGSL twin: `shaders/conv2d.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

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
