//! 2-D convolution: the reference against finite differences and PyTorch, then every
//! executor against the reference.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;
use wgcnn::exec::gpu::ops::Ops;
use wgcnn::exec::gpu::plan::Fused;
use wgcnn::spec::Layer;

#[test]
fn conv2d_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    // (batch, in_channels, height, width, out_channels, kernel, stride, padding)
    let shapes = [
        (1, 1, 5, 5, 1, 3, 1, 0), // one channel, batch 1
        (2, 3, 7, 6, 4, 3, 2, 1), // odd sizes, stride 2, padding
        (3, 2, 8, 7, 3, 3, 3, 2), // stride 3, padding 2
        (1, 2, 4, 4, 3, 4, 1, 0), // kernel as large as the input
        (2, 1, 1, 1, 2, 1, 1, 0), // 1x1 image, 1x1 kernel
        (1, 3, 5, 5, 2, 5, 1, 2), // kernel as large as the input, with padding
        (2, 2, 6, 9, 5, 2, 2, 0), // even kernel
    ];
    for (case, &(batch, cin, h, w, cout, k, stride, padding)) in shapes.iter().enumerate() {
        for with_bias in [true, false] {
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
            let x = random_f64(&mut rng, s.input_len());
            let wt = random_f64(&mut rng, s.weight_len());
            let b = random_f64(&mut rng, cout);
            let r = random_f64(&mut rng, s.output_len());
            let bias = with_bias.then_some(b.as_slice());
            let loss = |x: &[f64], wt: &[f64], b: Option<&[f64]>| {
                let mut y = vec![0.0; s.output_len()];
                conv2d_forward(&s, x, wt, b, &mut y);
                dot(&y, &r)
            };
            let mut dx = vec![0.0; x.len()];
            conv2d_backward_input(&s, &r, &wt, &mut dx);
            let mut dw = vec![0.0; wt.len()];
            let mut db = vec![0.0; cout];
            conv2d_backward_weight(&s, &x, &r, &mut dw, Some(&mut db));
            let tag = format!("conv2d case {case} {s:?} bias {with_bias}");
            check_gradient(&format!("{tag} d_input"), &x, &dx, |v| loss(v, &wt, bias));
            check_gradient(&format!("{tag} d_weight"), &wt, &dw, |v| loss(&x, v, bias));
            if with_bias {
                check_gradient(&format!("{tag} d_bias"), &b, &db, |v| {
                    loss(&x, &wt, Some(v))
                });
            }
        }
    }
}
#[test]
fn conv2d_matches_pytorch() {
    let f = Fixture::load("layers.safetensors");
    let mut cases = 0;
    for i in 0.. {
        let case = format!("conv2d.{i}");
        if !f.has(&format!("{case}.config")) {
            break;
        }
        let c = f.usize(&format!("{case}.config"));
        let s = Conv2dShape {
            batch: c[0],
            in_channels: c[1],
            in_height: c[2],
            in_width: c[3],
            out_channels: c[4],
            kernel_size: c[5],
            stride: c[6],
            padding: c[7],
        };
        let has_bias = c[8] == 1;
        let get = |k: &str| f.f32(&format!("{case}.{k}"));
        let (x, w, d_out) = (get("input"), get("weight"), get("d_output"));
        let b = has_bias.then(|| get("bias"));
        let mut y = vec![0.0; s.output_len()];
        conv2d_forward(&s, &x, &w, b.as_deref(), &mut y);
        close_torch(&format!("{case} {s:?} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        conv2d_backward_input(&s, &d_out, &w, &mut dx);
        close_torch(&format!("{case} d_input"), &dx, &get("d_input"));
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; s.out_channels];
        conv2d_backward_weight(&s, &x, &d_out, &mut dw, has_bias.then_some(&mut db[..]));
        close_torch(&format!("{case} d_weight"), &dw, &get("d_weight"));
        if has_bias {
            close_torch(&format!("{case} d_bias"), &db, &get("d_bias"));
        }
        cases += 1;
    }
    assert_eq!(cases, 5);
}
/// Every executor's convolution against the reference, on awkward shapes: odd sizes, stride 2 and
/// 3, padding larger than half the kernel, kernels 1, 4 and 5 and as large as the input, batch 1,
/// one channel, sizes that are not multiples of any tile, and the default network's second layer.
/// Then the fused forms where the executor has them: a ReLU applied by the forward pass, and the
/// mask of a ReLU before the layer (here `x > 0`, x of both signs) applied by the input gradient.
#[test]
fn conv2d_matches_the_reference_on_every_executor() {
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    // (batch, in, height, width, out, kernel, stride, padding, bias). 3x3 stride-1 shapes with at
    // least 4 input channels take the fast CPU executor's Winograd path (odd and even sizes,
    // padding 0, 1 and 2, a single row of outputs, 17 output channels, uneven batch chunks);
    // other stride-1 shapes with fewer than 16 taps its direct path; the others im2col + SGEMM.
    let shapes = [
        (1, 1, 28, 28, 8, 3, 1, 0, true), // the notebooks' first layer, batch 1
        (3, 3, 9, 7, 4, 3, 2, 1, true),   // odd sizes, stride 2, padding 1
        (2, 2, 11, 10, 5, 3, 3, 2, false), // stride 3, padding 2, no bias
        (2, 4, 5, 5, 3, 5, 1, 0, true),   // kernel as large as the input
        (1, 1, 1, 1, 1, 1, 1, 0, true),   // 1x1x1x1
        (5, 16, 12, 12, 32, 3, 1, 1, true), // 23040 outputs (not a multiple of 64)
        (2, 3, 8, 8, 2, 4, 2, 3, true),   // even kernel, padding larger than half the kernel
        (3, 20, 14, 13, 40, 3, 1, 1, true), // several GPU tiles in every dimension, split-K
        (3, 5, 9, 7, 6, 3, 1, 0, true),   // Winograd, odd sizes
        (2, 4, 6, 11, 17, 3, 1, 1, false), // Winograd, 17 output channels (a vector and one)
        (11, 6, 4, 5, 3, 3, 1, 2, true),  // Winograd, padding 2, 11 samples
        (2, 4, 3, 3, 2, 3, 1, 0, true),   // Winograd, one output
        (1, 4, 1, 2, 3, 3, 1, 1, true),   // Winograd, a single row of outputs
        (2, 3, 6, 7, 4, 3, 1, 1, true),
        (4, 32, 26, 26, 64, 3, 1, 0, true), // the default network's second convolution
        (9, 16, 12, 12, 32, 3, 1, 1, true), // 9 samples: uneven chunks of the weight-gradient reduction
        (3, 2, 10, 9, 11, 3, 1, 1, true), // GPU weight gradient by output channel: 2 inputs, 8 + 3 outputs
        (2, 1, 13, 12, 7, 2, 1, 1, false), // the same with an even kernel, no bias; 8-column forward strips
        (3, 1, 9, 14, 5, 5, 1, 2, true), // 5x5 on one channel: 2x2 blocks of 3x3 taps, 13 of 36 cut
        (3, 2, 7, 9, 6, 2, 1, 1, true),  // fast CPU direct: 2 channels, padding, 4 + 2 outputs
        (2, 5, 6, 7, 9, 1, 1, 0, false), // fast CPU direct: 1x1 kernel, 5 taps (4 + 1), 9 outputs
    ];
    for runner in runners() {
        let (linear, reduction) = runner.tolerances();
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
            let x = random_f32(&mut rng, s.input_len());
            let wt = random_f32(&mut rng, s.weight_len());
            let b = random_f32(&mut rng, cout);
            let d_out = random_f32(&mut rng, s.output_len());
            let bias = bias.then_some(&b[..]);
            let mut y = vec![0.0; s.output_len()];
            conv2d_forward(&s, &x, &wt, bias, &mut y);
            let mut dx = vec![0.0; s.input_len()];
            conv2d_backward_input(&s, &d_out, &wt, &mut dx);
            let mut dw = vec![0.0; s.weight_len()];
            let mut db = vec![0.0; cout];
            conv2d_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
            let tag = format!("conv2d {s:?} ({})", runner.name());
            let r = runner
                .conv2d(&s, &x, &wt, bias, &d_out, Fused::default())
                .expect("every executor runs the plain convolution");
            close_tol(&format!("{tag} output"), &r.output, &y, linear);
            close_tol(&format!("{tag} d_input"), &r.d_input, &dx, linear);
            close_tol(&format!("{tag} d_weight"), &r.d_weight, &dw, reduction);
            // The fast CPU executor computes the bias gradient whether or not the layer has a bias.
            if bias.is_some() || runner.name() == "fast CPU" {
                close_tol(&format!("{tag} d_bias"), &r.d_bias, &db, reduction);
            }
            let run = |fused| runner.conv2d(&s, &x, &wt, bias, &d_out, fused);
            check_relu_fusions(&tag, linear, (&x, &y, &dx), run);
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
    // Batch 1100 of 28x28 into 24 channels. The portable kernel (no subgroups) runs 1100 x 6 x 676
    // = 4.46M forward invocations (four channels each), 69,713 workgroups of 64: over the 65535
    // one grid dimension allows, so it runs on a 2-D grid. The subgroup kernel tiles its own 3-D
    // grid (3129 x 2 x 1 here); the ReLU below needs a 2-D grid either way.
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
    let x = random_scaled(&mut rng, s.input_len(), 1.0);
    let wt = random_scaled(&mut rng, s.weight_len(), 1.0);
    let b = random_scaled(&mut rng, 24, 1.0);
    let d_out = random_scaled(&mut rng, s.output_len(), 1.0);
    let gpu = ops
        .conv2d(&s, &x, &wt, Some(&b), &d_out, Fused::default())
        .unwrap();
    let mut y = vec![0.0; s.output_len()];
    conv2d_forward(&s, &x, &wt, Some(&b), &mut y);
    close_tol("conv2d forward, batch 1100", &gpu.output, &y, LINEAR);
    let mut dx = vec![0.0; s.input_len()];
    conv2d_backward_input(&s, &d_out, &wt, &mut dx);
    close_tol(
        "conv2d backward input, batch 1100",
        &gpu.d_input,
        &dx,
        LINEAR,
    );
    // 17.8M elements: 278,850 workgroups.
    let (relu_gpu, _) = ops.activation(&Layer::Relu, 1100, &y, &d_out).unwrap();
    let mut relu = vec![0.0; y.len()];
    relu_forward(&y, &mut relu);
    close_tol("relu, 17.8M elements", &relu_gpu, &relu, LINEAR);
}
