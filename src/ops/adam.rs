//! The Adam and AdamW steps. WGSL twin: `shaders/adam.wgsl`.
//!
//! PyTorch's `torch.optim.Adam` / `AdamW` (single-tensor path, no AMSGrad), step `t` counted
//! from 1:
//!
//! ```text
//! AdamW:  param *= 1 - lr * weight_decay                 (decoupled decay)
//! Adam:   g = grad + weight_decay * param                 (L2, when weight_decay != 0)
//! exp_avg    = lerp(exp_avg, g, 1 - beta1)
//! exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
//! denom      = sqrt(exp_avg_sq) / sqrt(1 - beta2^t) + eps
//! param     += -(lr / (1 - beta1^t)) * (exp_avg / denom)
//! ```
//!
//! The scalars (`1 - beta1^t`, the step size, `1 - lr * weight_decay`, ...) are computed once a
//! step on the host in f64, as PyTorch computes them in Python floats, then rounded to f32
//! ([`AdamStep::new`]); the kernels use the rounded values.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

use super::cast;

// ---------------------------------------------------------------------------------------------

/// The scalars of one Adam or AdamW step, as the update (and the GPU kernel) uses them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// AdamW's decoupled decay factor `1 - lr * weight_decay` (1 for Adam).
    pub decay: f32,
    /// Adam's L2 coefficient, added to the gradient (0 for AdamW).
    pub l2: f32,
    /// `1 - beta1`: the weight of the gradient in the first moment.
    pub one_minus_beta1: f32,
    pub beta2: f32,
    /// `1 - beta2`.
    pub one_minus_beta2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step_size: f32,
    /// `sqrt(1 - beta2^t)`.
    pub bias_correction2_sqrt: f32,
}

impl AdamStep {
    /// The scalars of step `t` (1-based). `decoupled`: AdamW.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        weight_decay: f32,
        decoupled: bool,
        t: u64,
    ) -> AdamStep {
        // As PyTorch sees them: the decimal numbers the user wrote, as f64 (0.999, not the f64
        // of the f32 nearest 0.999: 1 - beta2 would be off by 1e-5 relative).
        let (lr64, b1, b2, wd) = (
            decimal(lr),
            decimal(beta1),
            decimal(beta2),
            decimal(weight_decay),
        );
        // t beyond i32 only matters for beta^t, which is 0 long before
        let t = t.min(i32::MAX as u64) as i32;
        let bias_correction1 = 1.0 - b1.powi(t);
        let bias_correction2 = 1.0 - b2.powi(t);
        AdamStep {
            decay: if decoupled {
                (1.0 - lr64 * wd) as f32
            } else {
                1.0
            },
            l2: if decoupled { 0.0 } else { weight_decay },
            one_minus_beta1: (1.0 - b1) as f32,
            beta2,
            one_minus_beta2: (1.0 - b2) as f32,
            eps,
            step_size: (lr64 / bias_correction1) as f32,
            bias_correction2_sqrt: bias_correction2.sqrt() as f32,
        }
    }
}

/// `x` as the f64 of its shortest decimal form: what a user typing the f32's value would give
/// PyTorch.
fn decimal(x: f32) -> f64 {
    x.to_string().parse().expect("an f32 prints as a number")
}

/// One Adam or AdamW step over a parameter tensor and its two moment buffers.
pub fn adam_update<T: Float>(
    s: &AdamStep,
    param: &mut [T],
    grad: &[T],
    exp_avg: &mut [T],
    exp_avg_sq: &mut [T],
) {
    let c = |v: f32| -> T { cast(v as f64) };
    let (decay, l2, w1, beta2, w2) = (
        c(s.decay),
        c(s.l2),
        c(s.one_minus_beta1),
        c(s.beta2),
        c(s.one_minus_beta2),
    );
    let (eps, step_size, bc2_sqrt) = (c(s.eps), c(s.step_size), c(s.bias_correction2_sqrt));
    let half: T = cast(0.5);
    for (((p, &g), m), v) in param
        .iter_mut()
        .zip(grad)
        .zip(exp_avg.iter_mut())
        .zip(exp_avg_sq.iter_mut())
    {
        if decay != T::one() {
            *p = *p * decay;
        }
        let g = if l2 != T::zero() { g + l2 * *p } else { g };
        // torch.lerp: start + w * (end - start) for w < 0.5, else end - (end - start) * (1 - w)
        *m = if w1 < half {
            *m + w1 * (g - *m)
        } else {
            g - (g - *m) * (T::one() - w1)
        };
        *v = *v * beta2 + w2 * g * g;
        let denom = v.sqrt() / bc2_sqrt + eps;
        *p = *p + (-step_size) * (*m / denom);
    }
}
