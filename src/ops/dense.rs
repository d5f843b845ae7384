//! Dense (fully connected) layers: `dense_forward`, `dense_backward_input`, `dense_backward_weight`.
//! WGSL twin: `shaders/dense.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

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
