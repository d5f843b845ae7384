//! Batch normalization over the channels of a tensor (PyTorch's `BatchNorm1d`/`BatchNorm2d`,
//! affine, momentum 0.1, eps 1e-5). WGSL twin: `shaders/batchnorm.wgsl`.
//!
//! While training, each channel is normalized with its batch statistics: the mean and the biased
//! variance over the batch and the spatial positions, `xhat = (x - mean) / sqrt(var + eps)`, then
//! `y = weight * xhat + bias`. After each training step the running statistics move towards the
//! batch's: `running = (1 - momentum) * running + momentum * batch`, with the *unbiased* variance
//! (PyTorch's rule). At evaluation the running statistics take the batch statistics' place.
//!
//! ---------------------------------------------------------------------------------------------
//! The gradient (`m` values a channel, sums over the channel's values):
//! `d_bias = sum(d_y)`, `d_weight = sum(d_y * xhat)`,
//! `d_x = weight / sqrt(var + eps) * (d_y - d_bias / m - xhat * d_weight / m)`.
//! ---------------------------------------------------------------------------------------------

use num_traits::Float;

use super::cast;

/// PyTorch's defaults, which every executor uses.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;

/// A batch of `batch` samples with `channels` channels of `spatial` values each (NCHW with
/// `spatial = H * W`; a flat tensor of features has `spatial = 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNormShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
}

impl BatchNormShape {
    /// The values over which one channel's statistics are taken.
    pub fn count(&self) -> usize {
        self.batch * self.spatial
    }

    /// The flat indices of channel `c`'s values, sample by sample.
    fn channel(&self, c: usize) -> impl Iterator<Item = usize> + '_ {
        (0..self.batch).flat_map(move |n| {
            let start = (n * self.channels + c) * self.spatial;
            start..start + self.spatial
        })
    }
}

/// Channel `c`'s batch mean and biased variance (two passes, as written). The sums are taken in
/// f64 whatever `T`: they run over thousands of values (batch x positions), and in f32 their
/// rounding would reach the outputs at ~1e-6, which training with batch statistics amplifies.
pub fn batchnorm_stats<T: Float>(s: &BatchNormShape, x: &[T], c: usize) -> (T, T) {
    let m = s.count() as f64;
    let value = |i: usize| x[i].to_f64().expect("a float converts to f64");
    let mean = s.channel(c).map(value).sum::<f64>() / m;
    let var = s.channel(c).map(|i| (value(i) - mean).powi(2)).sum::<f64>() / m;
    (cast(mean), cast(var))
}

/// `y = weight * (x - mean) / sqrt(var + eps) + bias` for each channel's (mean, var).
fn normalize<T: Float>(
    s: &BatchNormShape,
    x: &[T],
    weight: &[T],
    bias: &[T],
    stats: impl Fn(usize) -> (T, T),
    y: &mut [T],
) {
    for c in 0..s.channels {
        let (mean, var) = stats(c);
        let inv_std = T::one() / (var + cast(BN_EPS)).sqrt();
        for i in s.channel(c) {
            y[i] = (x[i] - mean) * inv_std * weight[c] + bias[c];
        }
    }
}

/// Training: normalize with the batch statistics.
pub fn batchnorm_forward<T: Float>(
    s: &BatchNormShape,
    x: &[T],
    weight: &[T],
    bias: &[T],
    y: &mut [T],
) {
    normalize(s, x, weight, bias, |c| batchnorm_stats(s, x, c), y);
}

/// Evaluation: normalize with the running statistics.
pub fn batchnorm_forward_eval<T: Float>(
    s: &BatchNormShape,
    x: &[T],
    weight: &[T],
    bias: &[T],
    running_mean: &[T],
    running_var: &[T],
    y: &mut [T],
) {
    normalize(s, x, weight, bias, |c| (running_mean[c], running_var[c]), y);
}

/// After a training step on `x`: move the running statistics towards the batch's (the variance
/// unbiased, `var * m / (m - 1)`).
pub fn batchnorm_update_running<T: Float>(
    s: &BatchNormShape,
    x: &[T],
    running_mean: &mut [T],
    running_var: &mut [T],
) {
    let momentum: T = cast(BN_MOMENTUM);
    let m = s.count() as f64;
    let unbias: T = cast(m / (m - 1.0).max(1.0));
    for c in 0..s.channels {
        let (mean, var) = batchnorm_stats(s, x, c);
        running_mean[c] = (T::one() - momentum) * running_mean[c] + momentum * mean;
        running_var[c] = (T::one() - momentum) * running_var[c] + momentum * var * unbias;
    }
}

/// The gradients of the training pass: writes `d_weight`, `d_bias` and, when given, `d_x`.
pub fn batchnorm_backward<T: Float>(
    s: &BatchNormShape,
    x: &[T],
    d_y: &[T],
    weight: &[T],
    d_x: Option<&mut [T]>,
    d_weight: &mut [T],
    d_bias: &mut [T],
) {
    let m: T = cast(s.count() as f64);
    let mut inv_stds = Vec::with_capacity(s.channels);
    let mut means = Vec::with_capacity(s.channels);
    for c in 0..s.channels {
        let (mean, var) = batchnorm_stats(s, x, c);
        let inv_std = T::one() / (var + cast(BN_EPS)).sqrt();
        // In f64, as the statistics are.
        let f = |v: T| v.to_f64().expect("a float converts to f64");
        let (mut sum_dy, mut sum_dy_xhat) = (0.0, 0.0);
        for i in s.channel(c) {
            sum_dy += f(d_y[i]);
            sum_dy_xhat += f(d_y[i]) * f((x[i] - mean) * inv_std);
        }
        d_bias[c] = cast(sum_dy);
        d_weight[c] = cast(sum_dy_xhat);
        means.push(mean);
        inv_stds.push(inv_std);
    }
    if let Some(d_x) = d_x {
        for c in 0..s.channels {
            let (mean, inv_std) = (means[c], inv_stds[c]);
            for i in s.channel(c) {
                let xhat = (x[i] - mean) * inv_std;
                d_x[i] = weight[c] * inv_std * (d_y[i] - d_bias[c] / m - xhat * d_weight[c] / m);
            }
        }
    }
}
