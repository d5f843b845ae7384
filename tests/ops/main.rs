//! Each op once: its reference against finite differences and PyTorch fixtures, and every
//! executor (the fast CPU executor, the GPU on its own grid and on forced 2-D grids) against the
//! reference, each test written once against `common::OpRunner`. One file per op, named like its
//! shader in `shaders/` and its reference in `src/ops/`.
//!
//! `WGCNN_TEST_EXECUTORS=fast` (or `gpu`) limits the executor-parameterised tests to those
//! executors. Without a GPU adapter the GPU variants skip with a message, unless
//! `WGCNN_REQUIRE_GPU=1`.

#[path = "../common/mod.rs"]
mod common;

mod activation;
mod adam;
mod augment;
mod batchnorm;
mod conv2d;
mod dense;
mod dropout;
mod loss;
mod pool;
mod sgd;
