//! The SGD step. WGSL twin: `shaders/sgd.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

// ---------------------------------------------------------------------------------------------

/// SGD with momentum and L2 weight decay, as PyTorch's `torch.optim.SGD` (no dampening, no
/// Nesterov): `g = grad + weight_decay * param` (when `weight_decay` is not 0);
/// `velocity = momentum * velocity + g; param -= lr * velocity`. With momentum 0 this is plain SGD.
pub fn sgd_update<T: Float>(
    lr: T,
    momentum: T,
    weight_decay: T,
    param: &mut [T],
    grad: &[T],
    velocity: &mut [T],
) {
    for ((p, &g), v) in param.iter_mut().zip(grad).zip(velocity.iter_mut()) {
        let g = if weight_decay != T::zero() {
            g + weight_decay * *p
        } else {
            g
        };
        *v = momentum * *v + g;
        *p = *p - lr * *v;
    }
}
