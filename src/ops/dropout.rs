//! Dropout with a counter-based mask. WGSL twin: `shaders/dropout.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

use super::cast;

// ---------------------------------------------------------------------------------------------

/// Chris Wellons' `lowbias32` integer hash: good avalanche in a few u32 operations that WGSL has.
pub fn hash_u32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// A uniform number in [0, 1) drawn from (seed, step, element index) alone:
/// `hash(hash(hash(seed) ^ step) ^ index)`, top 24 bits, times 2^-24 (exact in f32).
pub fn dropout_uniform(seed: u32, step: u32, index: u32) -> f32 {
    let h = hash_u32(hash_u32(hash_u32(seed) ^ step) ^ index);
    (h >> 8) as f32 * (1.0 / 16_777_216.0)
}

/// Whether element `index` of the batch tensor is kept: kept when its uniform is `>= p`.
pub fn dropout_keep(p: f32, seed: u32, step: u32, index: u32) -> bool {
    dropout_uniform(seed, step, index) >= p
}

/// Training-time dropout: a kept element is scaled by `1 / (1 - p)`, a dropped one is zero.
/// (At evaluation, dropout is the identity and is not called.)
pub fn dropout_forward<T: Float>(p: f32, seed: u32, step: u32, input: &[T], output: &mut [T]) {
    let scale = T::one() / (T::one() - cast(p as f64));
    for i in 0..input.len() {
        output[i] = if dropout_keep(p, seed, step, i as u32) {
            input[i] * scale
        } else {
            T::zero()
        };
    }
}

/// The same mask, redrawn from the same (seed, step, index), applied to the gradient.
pub fn dropout_backward<T: Float>(p: f32, seed: u32, step: u32, d_output: &[T], d_input: &mut [T]) {
    let scale = T::one() / (T::one() - cast(p as f64));
    for i in 0..d_output.len() {
        d_input[i] = if dropout_keep(p, seed, step, i as u32) {
            d_output[i] * scale
        } else {
            T::zero()
        };
    }
}
