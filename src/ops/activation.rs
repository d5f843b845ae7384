//! Elementwise activations: ReLU, tanh, sigmoid. WGSL twin: `shaders/activation.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

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
