//! The ops: every layer's forward and backward pass as plain loops, and the shape type each op
//! is defined over. This is the specification that the GPU shaders (and the fast CPU executor)
//! are checked against, so it is written to be read and checked by eye, not to be fast.
//!
//! One file per op, named like its WGSL twin in `shaders/`, with the same entry-point names:
//!
//! | op | reference | shader | test |
//! | --- | --- | --- | --- |
//! | 2-D convolution | [`conv2d`] | `shaders/conv2d.wgsl` | `tests/ops/conv2d.rs` |
//! | max / average pooling | [`pool`] | `shaders/pool.wgsl` | `tests/ops/pool.rs` |
//! | dense | [`dense`] | `shaders/dense.wgsl` | `tests/ops/dense.rs` |
//! | ReLU, tanh, sigmoid | [`activation`] | `shaders/activation.wgsl` | `tests/ops/activation.rs` |
//! | dropout | [`dropout`] | `shaders/dropout.wgsl` | `tests/ops/dropout.rs` |
//! | batch normalization | [`batchnorm`] | `shaders/batchnorm.wgsl` | `tests/ops/batchnorm.rs` |
//! | losses and accuracy | [`loss`] | `shaders/loss.wgsl` | `tests/ops/loss.rs` |
//! | batch gathering | [`batch`] | `shaders/batch.wgsl` | `tests/ops/sgd.rs` |
//! | data augmentation | [`augment`] | `shaders/batch.wgsl` | `tests/ops/augment.rs` |
//! | SGD with momentum | [`sgd`] | `shaders/sgd.wgsl` | `tests/ops/sgd.rs` |
//! | Adam, AdamW | [`adam`] | `shaders/adam.wgsl` | `tests/ops/adam.rs` |
//!
//! Conventions, shared with `shaders/`:
//! - Tensors are flat slices in NCHW order: `x[((n * C + c) * H + h) * W + w]`.
//! - Parameter layouts are PyTorch's: conv weight `[out, in, k, k]`, dense weight `[out, in]`.
//! - A `*_forward` function writes its whole output; a `*_backward*` function writes its whole
//!   gradient (it zeroes first where it accumulates). Names match the WGSL entry points.
//! - Everything is generic over the float type: f32 for training, f64 for gradient checks.
//!
//! Every op's functions and shape type are re-exported here, so `ops::conv2d_forward` and
//! `ops::Conv2dShape` name them without the file.

use num_traits::Float;

pub mod activation;
pub mod adam;
pub mod augment;
pub mod batch;
pub mod batchnorm;
pub mod conv2d;
pub mod dense;
pub mod dropout;
pub mod loss;
pub mod pool;
pub mod sgd;

pub use activation::*;
pub use adam::*;
pub use augment::*;
pub use batch::*;
pub use batchnorm::*;
pub use conv2d::*;
pub use dense::*;
pub use dropout::*;
pub use loss::*;
pub use pool::*;
pub use sgd::*;

fn cast<T: Float>(value: f64) -> T {
    T::from(value).expect("every f64 constant fits in the float type")
}
