//! The optimizer step. WGSL twin: `shaders/sgd.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

// ---------------------------------------------------------------------------------------------

/// SGD with momentum, as PyTorch's `torch.optim.SGD` (no dampening, no Nesterov):
/// `velocity = momentum * velocity + grad; param -= lr * velocity`. With momentum 0 this is plain SGD.
pub fn sgd_update<T: Float>(lr: T, momentum: T, param: &mut [T], grad: &[T], velocity: &mut [T]) {
    for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
        *v = momentum * *v + g;
        *p = *p - lr * *v;
    }
}
