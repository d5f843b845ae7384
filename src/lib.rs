//! wgcnn: a convolutional neural network trainer whose layers run as WGSL compute shaders, with a
//! plain CPU reference in the same crate that proves the GPU right.
//!
//! How the pieces fit:
//! - [`data`]: MNIST from IDX (gzip or not) or CSV, every field checked.
//! - [`spec`]: the layer catalogue, the network spec language and the named presets.
//! - [`network`]: a spec resolved for an input shape: shapes, parameters (PyTorch names and
//!   layouts), seeded initialisation.
//! - [`reference`](mod@reference): every layer's forward and backward pass as plain loops: the specification.
//! - [`executor`]: the trait an executor implements to train and evaluate a network on a device.
//! - [`cpu`]: the CPU reference executor, built from [`reference`](mod@reference).
//! - [`fast`]: the fast CPU executor: Winograd or im2col convolutions over all cores, checked
//!   against [`reference`](mod@reference).
//! - [`winograd`]: Winograd F(2x2, 3x3) transforms for the fast executor's 3x3 convolutions.
//! - [`gpu`]: the GPU executor: the same network run by the WGSL kernels in `shaders/`.
//! - [`train`]: the training loop, shared by every executor.
//! - [`checkpoint`]: safetensors checkpoints PyTorch can read; atomic writes.
//! - [`predict`]: a user's picture of a digit made to look like MNIST.
//! - [`plot`]: training curves, confusion matrix and mistakes as PNG.
//! - [`bench`](mod@bench): the training benchmark behind `wgcnn bench`.
//! - [`cli`]: the command line.

pub mod bench;
pub mod checkpoint;
pub mod cli;
pub mod cpu;
pub mod data;
pub mod executor;
pub mod fast;
pub mod gpu;
pub mod network;
pub mod plot;
pub mod predict;
pub mod reference;
pub mod spec;
pub mod train;
pub mod winograd;
