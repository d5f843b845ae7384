//! wgcnn: a convolutional neural network trainer whose layers run as WGSL compute shaders, with a
//! plain CPU reference in the same crate that proves the GPU right.
//!
//! How the pieces fit (see also `ARCHITECTURE.md`):
//! - [`ops`]: every op's forward and backward pass as plain loops, and its shape type: the
//!   specification. One file per op, named like its shader in `shaders/`.
//! - [`exec`]: the [`exec::Executor`] trait and its three implementations, one folder each:
//!   [`exec::reference`](mod@exec::reference) (the ops run as written), [`exec::fast`] (Winograd / SGEMM over all
//!   cores) and [`exec::gpu`] (the WGSL kernels of `shaders/`).
//! - [`data`]: MNIST and Fashion-MNIST from IDX (gzip or not) or CSV, every field checked, and
//!   the names of a data set's classes.
//! - [`spec`]: the layer catalogue, the network spec language and the named presets.
//! - [`network`]: a spec resolved for an input shape: shapes, parameters (PyTorch names and
//!   layouts), seeded initialisation.
//! - [`train`]: the training loop, shared by every executor.
//! - [`checkpoint`]: safetensors checkpoints PyTorch can read, naming their classes; atomic writes.
//! - [`predict`]: a user's picture of a digit made to look like MNIST.
//! - [`plot`]: training curves, confusion matrix and mistakes as PNG.
//! - [`cli`]: the command line, one file per command (`train`, `eval`, `predict`, `bench`).

pub mod checkpoint;
pub mod cli;
pub mod data;
pub mod exec;
pub mod network;
pub mod ops;
pub mod plot;
pub mod predict;
pub mod schedule;
pub mod spec;
pub mod train;
