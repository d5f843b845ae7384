//! The GPU equals the CPU reference: every WGSL entry point against its CPU twin on awkward
//! shapes, then whole networks over several SGD steps.
//!
//! These tests need a GPU adapter (a software one will do: `apt-get install mesa-vulkan-drivers`).
//! Without one they skip with a message, unless `WGCNN_REQUIRE_GPU=1` (as in CI), where a missing
//! adapter fails them.
//!
//! Tolerances: `|gpu - cpu| <= atol + rtol * |cpu|`, with the reason at each use. What differs:
//! summation order (the weight-gradient kernels reduce in a tree), fused multiply-add on real GPUs
//! (lavapipe does not fuse), and WGSL's precision for exp/log/tanh/division (a few ULP rather than
//! correctly rounded).

mod common;

use std::sync::{Arc, OnceLock};

use common::assert_close;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::data::{load_split, Dataset, Normalization, Split, IMAGE_PIXELS};
use wgcnn::exec::gpu::ops::Ops;
use wgcnn::exec::gpu::plan::Fused;
use wgcnn::exec::gpu::{AdapterChoice, Gpu, GpuExecutor, Kernels};
use wgcnn::exec::reference::CpuReference;
use wgcnn::exec::{Executor, Sgd};
use wgcnn::network::{Network, Shape};
use wgcnn::ops::*;
use wgcnn::ops::{loss_backward, loss_forward};
use wgcnn::spec::{Layer, Loss, NetSpec};

/// Sums of products in a different order: relative error grows like sqrt(terms) * 6e-8; with a few
/// hundred terms of magnitude <= 1 that stays under 1e-5 absolute. A wrong index is off by 1e-1.
const LINEAR: (f32, f32) = (2e-5, 1e-4);
/// exp, log, tanh and division are accurate to a few ULP in WGSL, not correctly rounded.
const TRANSCENDENTAL: (f32, f32) = (1e-5, 1e-4);

struct Device {
    gpu: Arc<Gpu>,
    kernels: Arc<Kernels>,
    /// The same pipelines, limited to 3 workgroups per grid dimension: every dispatch of a
    /// non-trivial shape then runs on a 2-D grid.
    small_grid: Arc<Kernels>,
}

fn device() -> Option<&'static Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| match Gpu::new(&AdapterChoice::default()) {
            Ok(gpu) => {
                let gpu = Arc::new(gpu);
                eprintln!("GPU tests run on {}", gpu.describe());
                let kernels = Arc::new(Kernels::new(&gpu).expect("pipelines build"));
                let mut small = Kernels::new(&gpu).expect("pipelines build");
                small.set_max_groups_per_dimension(3);
                Some(Device {
                    gpu,
                    kernels,
                    small_grid: Arc::new(small),
                })
            }
            Err(e) => {
                if std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                    panic!("WGCNN_REQUIRE_GPU=1 but no GPU adapter could be opened: {e:#}");
                }
                eprintln!("skipping the GPU tests: no GPU adapter ({e:#})");
                None
            }
        })
        .as_ref()
}

/// Both kernel sets: the device's real grid limit, and the tiny one that forces 2-D grids.
fn op_runners() -> Vec<(&'static str, Ops<'static>)> {
    match device() {
        Some(d) => vec![
            (
                "full grid",
                Ops {
                    gpu: &d.gpu,
                    kernels: &d.kernels,
                },
            ),
            (
                "2-D grid",
                Ops {
                    gpu: &d.gpu,
                    kernels: &d.small_grid,
                },
            ),
        ],
        None => vec![],
    }
}

fn random(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

fn close(what: &str, gpu: &[f32], cpu: &[f32], tol: (f32, f32)) {
    assert_close(what, gpu, cpu, tol.0, tol.1);
}

#[test]
fn conv2d_matches_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // (batch, in, height, width, out, kernel, stride, padding, bias)
    let shapes = [
        (1, 1, 28, 28, 8, 3, 1, 0, true), // the notebooks' first layer, batch 1
        (3, 3, 9, 7, 4, 3, 2, 1, true),   // odd sizes, stride 2, padding 1
        (2, 2, 11, 10, 5, 3, 3, 2, false), // stride 3, padding 2, no bias
        (2, 4, 5, 5, 3, 5, 1, 0, true),   // kernel as large as the input
        (1, 1, 1, 1, 1, 1, 1, 0, true),   // 1x1x1x1
        (5, 16, 12, 12, 32, 3, 1, 1, true), // several channels, 23040 outputs (not a multiple of 64)
        (2, 3, 8, 8, 2, 4, 2, 3, true),     // even kernel, padding larger than half the kernel
        // Several tiles of the fast kernels in every dimension: 2 blocks of 16 input channels, 3
        // of 16 output channels, widths not a multiple of 4, several split-K slices.
        (3, 20, 14, 13, 40, 3, 1, 1, true),
    ];
    for (grid, ops) in op_runners() {
        for &(batch, cin, h, w, cout, k, stride, padding, bias) in &shapes {
            let s = Conv2dShape {
                batch,
                in_channels: cin,
                in_height: h,
                in_width: w,
                out_channels: cout,
                kernel_size: k,
                stride,
                padding,
            };
            let x = random(&mut rng, s.input_len(), 1.0);
            let wt = random(&mut rng, s.weight_len(), 1.0);
            let b = random(&mut rng, cout, 1.0);
            let d_out = random(&mut rng, s.output_len(), 1.0);
            let bias = bias.then_some(&b[..]);
            let gpu = ops.conv2d(&s, &x, &wt, bias, &d_out).unwrap();
            let mut y = vec![0.0; s.output_len()];
            conv2d_forward(&s, &x, &wt, bias, &mut y);
            let mut dx = vec![0.0; s.input_len()];
            conv2d_backward_input(&s, &d_out, &wt, &mut dx);
            let mut dw = vec![0.0; s.weight_len()];
            let mut db = vec![0.0; cout];
            conv2d_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
            let tag = format!("conv2d {s:?} ({grid})");
            close(&format!("{tag} output"), &gpu.output, &y, LINEAR);
            close(&format!("{tag} d_input"), &gpu.d_input, &dx, LINEAR);
            // The weight gradient sums batch x output positions (up to 3600 terms here): tree vs.
            // sequential order gives relative differences of ~1e-6 of the sum of magnitudes.
            close(&format!("{tag} d_weight"), &gpu.d_weight, &dw, (1e-4, 1e-4));
            if bias.is_some() {
                close(&format!("{tag} d_bias"), &gpu.d_bias, &db, (1e-4, 1e-4));
            }
            if ops.kernels.fast() {
                // The fast kernels' fusions: a ReLU applied by the forward pass, and the mask of
                // a ReLU before the layer applied by the input gradient (x > 0 as that ReLU's
                // output). Same sums as above, so the same tolerances.
                let fused = Fused {
                    relu: true,
                    relu_mask: true,
                };
                let gpu = ops.conv2d_fused(&s, &x, &wt, bias, &d_out, fused).unwrap();
                let mut relu_y = vec![0.0; y.len()];
                relu_forward(&y, &mut relu_y);
                let mut masked = vec![0.0; dx.len()];
                relu_backward(&x, &dx, &mut masked);
                close(
                    &format!("{tag} output + ReLU"),
                    &gpu.output,
                    &relu_y,
                    LINEAR,
                );
                close(
                    &format!("{tag} d_input x ReLU mask"),
                    &gpu.d_input,
                    &masked,
                    LINEAR,
                );
            }
        }
    }
}

#[test]
fn pooling_matches_the_cpu_reference_including_ties() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (batch, channels, height, width, window, stride)
    let shapes = [
        (2, 3, 26, 26, 2, 2), // max pool 2 after a 3x3 conv
        (2, 6, 26, 26, 3, 1), // the notebook's 3x3 average pool at stride 1
        (1, 2, 9, 7, 3, 3),   // stride 3, odd sizes
        (3, 1, 5, 5, 5, 5),   // window as large as the input
        (2, 1, 7, 7, 3, 2),   // overlapping windows, stride 2
        (1, 1, 1, 1, 1, 1),
    ];
    for (grid, ops) in op_runners() {
        for &(batch, channels, h, w, window, stride) in &shapes {
            let s = Pool2dShape {
                batch,
                channels,
                in_height: h,
                in_width: w,
                window,
                stride,
            };
            for ties in [false, true] {
                // With ties, values come from {-1, 0, 1}: many windows hold equal maxima, and the
                // GPU must pick the same (first) one as the CPU.
                let x: Vec<f32> = if ties {
                    (0..s.input_len())
                        .map(|_| rng.random_range(-1..=1) as f32)
                        .collect()
                } else {
                    random(&mut rng, s.input_len(), 1.0)
                };
                let d_out = random(&mut rng, s.output_len(), 1.0);
                for max in [true, false] {
                    let (y_gpu, dx_gpu) = ops.pool2d(max, &s, &x, &d_out).unwrap();
                    let mut y = vec![0.0; s.output_len()];
                    let mut dx = vec![0.0; s.input_len()];
                    if max {
                        max_pool2d_forward(&s, &x, &mut y);
                        max_pool2d_backward(&s, &x, &d_out, &mut dx);
                    } else {
                        avg_pool2d_forward(&s, &x, &mut y);
                        avg_pool2d_backward(&s, &d_out, &mut dx);
                    }
                    let tag = format!(
                        "{} {s:?} ties {ties} ({grid})",
                        if max { "max_pool2d" } else { "avg_pool2d" }
                    );
                    close(&format!("{tag} output"), &y_gpu, &y, LINEAR);
                    close(&format!("{tag} d_input"), &dx_gpu, &dx, LINEAR);
                }
            }
        }
    }
}

#[test]
fn dense_matches_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for (grid, ops) in op_runners() {
        for &(batch, in_features, out_features, bias) in &[
            (1, 1352, 10, true),
            (7, 33, 17, false),
            (3, 1, 1, true),
            (65, 100, 129, true),
            (33, 70, 40, true), // the fast forward's strips of outputs (>= 32), 3 blocks of samples
        ] {
            let s = DenseShape {
                batch,
                in_features,
                out_features,
            };
            let x = random(&mut rng, batch * in_features, 1.0);
            let wt = random(&mut rng, out_features * in_features, 0.1);
            let b = random(&mut rng, out_features, 1.0);
            let d_out = random(&mut rng, batch * out_features, 1.0);
            let bias = bias.then_some(&b[..]);
            let gpu = ops.dense(&s, &x, &wt, bias, &d_out).unwrap();
            let mut y = vec![0.0; batch * out_features];
            dense_forward(&s, &x, &wt, bias, &mut y);
            let mut dx = vec![0.0; batch * in_features];
            dense_backward_input(&s, &d_out, &wt, &mut dx);
            let mut dw = vec![0.0; wt.len()];
            let mut db = vec![0.0; out_features];
            dense_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
            let tag = format!("dense {s:?} ({grid})");
            // Same order of summation as the CPU: only FMA contraction can differ.
            close(&format!("{tag} output"), &gpu.output, &y, LINEAR);
            close(&format!("{tag} d_input"), &gpu.d_input, &dx, LINEAR);
            close(&format!("{tag} d_weight"), &gpu.d_weight, &dw, LINEAR);
            if bias.is_some() {
                close(&format!("{tag} d_bias"), &gpu.d_bias, &db, LINEAR);
            }
            if ops.kernels.fast() {
                // The fast kernels' fusions, as in the convolution test.
                let fused = Fused {
                    relu: true,
                    relu_mask: true,
                };
                let gpu = ops.dense_fused(&s, &x, &wt, bias, &d_out, fused).unwrap();
                let mut relu_y = vec![0.0; y.len()];
                relu_forward(&y, &mut relu_y);
                let mut masked = vec![0.0; dx.len()];
                relu_backward(&x, &dx, &mut masked);
                close(
                    &format!("{tag} output + ReLU"),
                    &gpu.output,
                    &relu_y,
                    LINEAR,
                );
                close(
                    &format!("{tag} d_input x ReLU mask"),
                    &gpu.d_input,
                    &masked,
                    LINEAR,
                );
            }
        }
    }
}

#[test]
fn activations_match_the_cpu_reference_even_for_huge_inputs() {
    let mut rng = ChaCha8Rng::seed_from_u64(13);
    type Pair = (fn(&[f32], &mut [f32]), fn(&[f32], &[f32], &mut [f32]));
    let ops_cpu: [(Layer, Pair); 3] = [
        (Layer::Relu, (relu_forward, relu_backward)),
        (Layer::Tanh, (tanh_forward, tanh_backward)),
        (Layer::Sigmoid, (sigmoid_forward, sigmoid_backward)),
    ];
    for (grid, ops) in op_runners() {
        for (batch, per_sample) in [(1, 1), (3, 1001), (64, 130)] {
            let mut x = random(&mut rng, batch * per_sample, 5.0);
            // Inputs far outside the interesting range: tanh via exp(2x) overflows here on some drivers.
            x[0] = 100.0;
            if x.len() > 1 {
                x[1] = -1000.0;
            }
            let d_out = random(&mut rng, x.len(), 1.0);
            for (name, (forward, backward)) in ops_cpu {
                let (y_gpu, dx_gpu) = ops.activation(&name, batch, &x, &d_out).unwrap();
                let mut y = vec![0.0; x.len()];
                forward(&x, &mut y);
                let mut dx = vec![0.0; x.len()];
                backward(&y, &d_out, &mut dx);
                let tag = format!("{name} batch {batch} x {per_sample} ({grid})");
                close(&format!("{tag} output"), &y_gpu, &y, TRANSCENDENTAL);
                close(&format!("{tag} d_input"), &dx_gpu, &dx, TRANSCENDENTAL);
            }
        }
    }
}

#[test]
fn dropout_masks_are_identical_to_the_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for (grid, ops) in op_runners() {
        for &(p, seed, step, batch, per_sample) in &[
            (0.5, 1u32, 0u32, 4, 100),
            (0.3, 77, 12345, 1, 7),
            (0.9, 3, 2, 9, 33),
        ] {
            let x = random(&mut rng, batch * per_sample, 1.0);
            let d_out = random(&mut rng, x.len(), 1.0);
            let (y_gpu, dx_gpu) = ops.dropout(p, seed, step, true, &x, &d_out).unwrap();
            let mut y = vec![0.0; x.len()];
            dropout_forward(p, seed, step, &x, &mut y);
            let mut dx = vec![0.0; x.len()];
            dropout_backward(p, seed, step, &d_out, &mut dx);
            // The mask is integer arithmetic and must match exactly; the scale 1/(1-p) is a WGSL
            // division (2.5 ULP).
            for i in 0..x.len() {
                assert_eq!(
                    y_gpu[i] == 0.0,
                    y[i] == 0.0,
                    "dropout p {p} ({grid}): mask differs at index {i}"
                );
            }
            let tag = format!("dropout p {p} seed {seed} step {step} ({grid})");
            close(&format!("{tag} output"), &y_gpu, &y, TRANSCENDENTAL);
            close(&format!("{tag} d_input"), &dx_gpu, &dx, TRANSCENDENTAL);
            // At evaluation, dropout is the identity.
            let (y_eval, _) = ops.dropout(p, seed, step, false, &x, &d_out).unwrap();
            assert_eq!(y_eval, x);
        }
    }
}

#[test]
fn losses_and_metrics_match_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let classes = 10;
    for (grid, ops) in op_runners() {
        // 300 samples: more than the 256 threads of the metrics reduction.
        for (batch, scale) in [(1, 3.0), (5, 3.0), (300, 5.0), (4, 500.0)] {
            let logits = random(&mut rng, batch * classes, scale);
            let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..10)).collect();
            for loss in [
                Loss::SoftmaxCrossEntropy,
                Loss::SigmoidBinaryCrossEntropy,
                Loss::SigmoidMeanSquaredError,
            ] {
                let gpu = ops.loss(loss, classes, &logits, &labels, 3).unwrap();
                let tag = format!("{loss:?} batch {batch} scale {scale} ({grid})");
                let d = loss_backward(loss, classes, &logits, &labels);
                close(
                    &format!("{tag} d_logits"),
                    &gpu.d_logits,
                    &d,
                    TRANSCENDENTAL,
                );
                for n in 0..batch {
                    let row = &logits[n * classes..(n + 1) * classes];
                    let cpu = loss_forward(loss, classes, row, &labels[n..n + 1]);
                    // Losses of logits up to 500 reach ~500: the relative term matters there.
                    close(
                        &format!("{tag} loss of sample {n}"),
                        &gpu.sample_loss[n..n + 1],
                        &[cpu],
                        TRANSCENDENTAL,
                    );
                    let correct = count_correct(classes, row, &labels[n..n + 1]) as u32;
                    assert_eq!(
                        gpu.sample_correct[n], correct,
                        "{tag}: correct flag of sample {n}"
                    );
                }
                let mean = loss_forward(loss, classes, &logits, &labels);
                close(
                    &format!("{tag} accumulated loss"),
                    &[gpu.loss_sum / batch as f32],
                    &[mean],
                    TRANSCENDENTAL,
                );
                assert_eq!(
                    gpu.correct as usize,
                    count_correct(classes, &logits, &labels),
                    "{tag}"
                );
                assert_eq!(gpu.count as usize, batch, "{tag}");
                assert_eq!(
                    gpu.first_bad_step,
                    u32::MAX,
                    "{tag}: no step should be marked bad"
                );
            }
        }
        // A NaN logit marks the step as diverged.
        let mut logits = random(&mut rng, 2 * classes, 1.0);
        logits[3] = f32::NAN;
        let gpu = ops
            .loss(Loss::SoftmaxCrossEntropy, classes, &logits, &[1, 2], 42)
            .unwrap();
        assert_eq!(gpu.first_bad_step, 42, "({grid})");
    }
}

#[test]
fn sgd_and_batch_gathering_match_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for (grid, ops) in op_runners() {
        for n in [1, 100, 1000] {
            let (mut p, g, mut v) = (
                random(&mut rng, n, 1.0),
                random(&mut rng, n, 1.0),
                random(&mut rng, n, 1.0),
            );
            let (p_gpu, v_gpu) = ops.sgd(0.05, 0.9, &p, &g, &v).unwrap();
            sgd_update(0.05, 0.9, &mut p, &g, &mut v);
            close(&format!("sgd param n {n} ({grid})"), &p_gpu, &p, LINEAR);
            close(&format!("sgd velocity n {n} ({grid})"), &v_gpu, &v, LINEAR);
        }
        // Gathering: 7 images of 784 u8 pixels (not a multiple of 4 bytes overall), shuffled order.
        let count = 7;
        let images: Vec<u8> = (0..count * IMAGE_PIXELS).map(|_| rng.random()).collect();
        let labels: Vec<u8> = (0..count).map(|_| rng.random_range(0..10)).collect();
        let data = Dataset {
            images: images.clone(),
            labels: labels.clone(),
            source: "test".into(),
        };
        let order = [4u32, 6, 0, 2, 1, 5, 3];
        for norm in [Normalization::UNIT, Normalization::STANDARD] {
            for (sequential, start, batch) in [(false, 2, 4), (true, 3, 4), (false, 0, 7)] {
                let (x, l) = ops
                    .gather_batch(
                        IMAGE_PIXELS,
                        &images,
                        &labels,
                        &order,
                        start,
                        batch,
                        sequential,
                        norm,
                    )
                    .unwrap();
                let indices: Vec<u32> = if sequential {
                    (start as u32..(start + batch) as u32).collect()
                } else {
                    order[start..start + batch].to_vec()
                };
                let (x_cpu, l_cpu) = wgcnn::ops::gather_batch(&data, &indices, norm);
                // One division by 255 and one by the deviation: a few ULP.
                close(
                    &format!("gather {norm:?} sequential {sequential} ({grid})"),
                    &x,
                    &x_cpu,
                    TRANSCENDENTAL,
                );
                assert_eq!(l, l_cpu.iter().map(|&v| v as u32).collect::<Vec<_>>());
            }
        }
    }
}

#[test]
fn a_dispatch_larger_than_65535_workgroups_uses_a_2d_grid() {
    let Some(d) = device() else { return };
    let ops = Ops {
        gpu: &d.gpu,
        kernels: &d.kernels,
    };
    // Batch 1100 of 28x28 into 24 channels: 1100 x 6 x 676 = 4.46M forward invocations (four
    // channels each), 69,713 workgroups of 64: over the 65535 one grid dimension allows.
    let s = Conv2dShape {
        batch: 1100,
        in_channels: 1,
        in_height: 28,
        in_width: 28,
        out_channels: 24,
        kernel_size: 3,
        stride: 1,
        padding: 0,
    };
    let threads = s.batch * wgcnn::exec::gpu::kernels::conv_forward_threads_per_sample(&s);
    let (x_groups, y_groups) = d
        .kernels
        .grid(wgcnn::exec::gpu::kernels::Work::Threads(threads as u32));
    assert!(y_groups > 1, "grid {x_groups} x {y_groups}");
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let x = random(&mut rng, s.input_len(), 1.0);
    let wt = random(&mut rng, s.weight_len(), 1.0);
    let b = random(&mut rng, 24, 1.0);
    let d_out = random(&mut rng, s.output_len(), 1.0);
    let gpu = ops.conv2d(&s, &x, &wt, Some(&b), &d_out).unwrap();
    let mut y = vec![0.0; s.output_len()];
    conv2d_forward(&s, &x, &wt, Some(&b), &mut y);
    close("conv2d forward, batch 1100", &gpu.output, &y, LINEAR);
    let mut dx = vec![0.0; s.input_len()];
    conv2d_backward_input(&s, &d_out, &wt, &mut dx);
    close(
        "conv2d backward input, batch 1100",
        &gpu.d_input,
        &dx,
        LINEAR,
    );
    // 17.8M elements: 278,850 workgroups.
    let (relu_gpu, _) = ops.activation(&Layer::Relu, 1100, &y, &d_out).unwrap();
    let mut relu = vec![0.0; y.len()];
    relu_forward(&y, &mut relu);
    close("relu, 17.8M elements", &relu_gpu, &relu, LINEAR);
}

/// Real MNIST images for the whole-network tests.
fn mnist_subset(n: usize) -> Dataset {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
    let mut set = load_split(&dir, Split::Test).unwrap();
    set.truncate(n);
    set
}

/// Several SGD steps of whole presets from identical weights on the same batches, on the GPU and
/// on the CPU reference: the loss and every parameter must agree after every step, and so must
/// the evaluation that follows.
#[test]
fn training_trajectories_match_the_cpu_reference() {
    let Some(d) = device() else { return };
    let data = mnist_subset(48);
    let presets = [
        ("tanh-avgpool", 8, 0.05), // average pooling
        ("dropout", 8, 0.05),      // dropout: the same masks on both sides
        ("relu-maxpool", 8, 0.05), // max pooling
        ("sigmoid-bce", 5, 0.5), // sigmoid + binary cross-entropy; 48 % 5 != 0: a short last batch
        ("two-conv", 6, 0.05),   // stacked convolutions with several channels
        // ReLUs fused into the fast kernels: applied by the convolution and dense layer before
        // them, and their masks by the convolution, max pooling and dense layer after them.
        (
            "conv6k3-relu-conv12k3-relu-maxpool2-dense40-relu-dense10",
            8,
            0.05,
        ),
        (
            "conv4k3s2p1nb-relu-maxpool3s2-dense12-sigmoid-dense10-mse",
            7,
            0.5,
        ), // stride, padding, no bias, MSE
    ];
    for (name, batch, lr) in presets {
        let text = wgcnn::spec::preset(name)
            .map(|p| p.spec.to_string())
            .unwrap_or_else(|_| name.to_string());
        let spec = NetSpec::parse(&text).unwrap();
        let net = Network::new(
            &spec,
            Shape {
                channels: 1,
                height: 28,
                width: 28,
            },
        )
        .unwrap();
        let seed = 3;
        let params = net.init_params(seed);
        let norm = Normalization::UNIT;
        let mut cpu = CpuReference::new(
            net.clone(),
            params.clone(),
            data.clone(),
            data.clone(),
            norm,
            seed,
        );
        let mut gpu = GpuExecutor::new(
            d.gpu.clone(),
            d.kernels.clone(),
            net.clone(),
            &params,
            &data,
            &data,
            norm,
            seed,
            batch,
        )
        .unwrap();
        let order: Vec<u32> = (0..data.len() as u32).rev().collect();
        cpu.begin_epoch(&order).unwrap();
        gpu.begin_epoch(&order).unwrap();
        let sgd = Sgd { lr, momentum: 0.9 };
        let steps = data.len().div_ceil(batch);
        assert!(steps >= 5);
        for step in 0..steps {
            let start = step * batch;
            let len = batch.min(data.len() - start);
            cpu.train_step(start, len, step as u32, sgd).unwrap();
            gpu.train_step(start, len, step as u32, sgd).unwrap();
            let (c, g) = (
                cpu.take_train_metrics().unwrap(),
                gpu.take_train_metrics().unwrap(),
            );
            let tag = format!("{name}: step {step}");
            assert_eq!(
                (c.count, c.correct),
                (g.count, g.correct),
                "{tag}: count and correct"
            );
            // Differences start at a few ULP and are carried along by training; after 8 steps of
            // lr <= 0.5 with momentum 0.9 they stay below 1e-4 relative (observed ~1e-6).
            close(
                &format!("{tag} loss"),
                &[g.mean_loss() as f32],
                &[c.mean_loss() as f32],
                (1e-5, 1e-4),
            );
            let (pc, pg) = (cpu.parameters().unwrap(), gpu.parameters().unwrap());
            for (info, (c, g)) in net.params.iter().zip(pc.iter().zip(&pg)) {
                close(&format!("{tag} {}", info.name), g, c, (2e-5, 1e-3));
            }
        }
        let (c, g) = (
            cpu.evaluate(Split::Test).unwrap(),
            gpu.evaluate(Split::Test).unwrap(),
        );
        assert_eq!(c.correct, g.correct, "{name}: evaluation correct count");
        close(
            &format!("{name} evaluation loss"),
            &[g.mean_loss() as f32],
            &[c.mean_loss() as f32],
            (1e-5, 1e-4),
        );
    }
}
