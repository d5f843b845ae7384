//! The fast CPU executor equals the CPU reference: every op on awkward shapes, then whole networks
//! over several SGD steps.
//!
//! Tolerance: `|fast - reference| <= atol + rtol * |reference|`. Both are f32; SGEMM sums in
//! blocks and with fused multiply-adds (AVX2/AVX-512), the reference sequentially, so sums of n
//! products differ by ~sqrt(n) ULP of their magnitude. The largest sums here have ~3600 terms
//! of magnitude <= 1: 1e-4 absolute covers them; a wrong index or a missing tap is off by 1e-1.
//! Winograd adds a few ULP of its transforms' partial sums (each a sum of at most 16 inputs or
//! products times 1/2 or 1/4), well inside the same bound; a 0.1% error in one transform
//! coefficient fails it (checked by mutation).

mod common;

use common::assert_close;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::data::{load_split, Normalization, Split};
use wgcnn::exec::fast::{kernels as fast, FastCpu};
use wgcnn::exec::reference::CpuReference;
use wgcnn::exec::{Executor, Sgd};
use wgcnn::network::{Network, Shape};
use wgcnn::ops::*;
use wgcnn::spec::NetSpec;

const TOL: (f32, f32) = (1e-4, 1e-4);

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn close(what: &str, fast: &[f32], reference: &[f32]) {
    assert_close(what, fast, reference, TOL.0, TOL.1);
}

#[test]
fn conv2d_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    // 3x3 stride-1 shapes with at least 4 input channels take the Winograd path (odd and even
    // sizes, padding 0, 1 and 2, a single row of outputs, 17 output channels (a vector and one),
    // batches that leave chunks uneven); the others im2col + SGEMM.
    for &(batch, cin, h, w, cout, k, stride, padding, bias) in &[
        (1, 1, 28, 28, 8, 3, 1, 0, true),
        (3, 5, 9, 7, 6, 3, 1, 0, true),
        (2, 4, 6, 11, 17, 3, 1, 1, false),
        (11, 6, 4, 5, 3, 3, 1, 2, true),
        (2, 4, 3, 3, 2, 3, 1, 0, true),
        (1, 4, 1, 2, 3, 3, 1, 1, true),
        (2, 3, 6, 7, 4, 3, 1, 1, true),
        (4, 32, 26, 26, 64, 3, 1, 0, true), // the default network's second convolution
        (3, 3, 9, 7, 4, 3, 2, 1, true),
        (2, 2, 11, 10, 5, 3, 3, 2, false),
        (2, 4, 5, 5, 3, 5, 1, 0, true),
        (1, 1, 1, 1, 1, 1, 1, 0, true),
        (9, 16, 12, 12, 32, 3, 1, 1, true), // 9 samples: uneven chunks of the weight-gradient reduction
        (2, 3, 8, 8, 2, 4, 2, 3, true),
    ] {
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
        let (x, wt, b, d_out) = (
            random(&mut rng, s.input_len()),
            random(&mut rng, s.weight_len()),
            random(&mut rng, cout),
            random(&mut rng, s.output_len()),
        );
        let bias = bias.then_some(&b[..]);
        let mut ws = fast::ConvWorkspace::new(&s);
        let (mut y, mut dx, mut dw, mut db) = (
            vec![0.0; s.output_len()],
            vec![0.0; s.input_len()],
            vec![0.0; s.weight_len()],
            vec![0.0; cout],
        );
        fast::conv2d_forward(&s, &x, &wt, bias, false, &mut y, &mut ws);
        fast::conv2d_backward_weight(&s, &d_out, &mut dw, Some(&mut db), &mut ws);
        fast::conv2d_backward_input(&s, &d_out, &wt, None, &mut dx, &mut ws);
        let (mut ry, mut rdx, mut rdw, mut rdb) = (
            vec![0.0; s.output_len()],
            vec![0.0; s.input_len()],
            vec![0.0; s.weight_len()],
            vec![0.0; cout],
        );
        conv2d_forward(&s, &x, &wt, bias, &mut ry);
        conv2d_backward_input(&s, &d_out, &wt, &mut rdx);
        conv2d_backward_weight(&s, &x, &d_out, &mut rdw, Some(&mut rdb));
        close(&format!("conv2d {s:?} output"), &y, &ry);
        close(&format!("conv2d {s:?} d_input"), &dx, &rdx);
        close(&format!("conv2d {s:?} d_weight"), &dw, &rdw);
        close(&format!("conv2d {s:?} d_bias"), &db, &rdb);

        // Fused with a ReLU: after it (forward) and before it (the input gradient goes back
        // through a ReLU whose output is `relu_out`, a vector of both signs).
        let relu_out = random(&mut rng, s.input_len());
        let (mut ry_relu, mut rdx_relu) = (vec![0.0; y.len()], vec![0.0; dx.len()]);
        relu_forward(&ry, &mut ry_relu);
        relu_backward(&relu_out, &rdx, &mut rdx_relu);
        fast::conv2d_forward(&s, &x, &wt, bias, true, &mut y, &mut ws);
        fast::conv2d_backward_input(&s, &d_out, &wt, Some(&relu_out), &mut dx, &mut ws);
        close(&format!("conv2d {s:?} + relu output"), &y, &ry_relu);
        close(&format!("relu + conv2d {s:?} d_input"), &dx, &rdx_relu);
    }
}

#[test]
fn dense_and_pooling_match_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for &(batch, in_features, out_features) in
        &[(1, 1352, 10), (7, 33, 17), (3, 1, 1), (65, 100, 129)]
    {
        let s = DenseShape {
            batch,
            in_features,
            out_features,
        };
        let (x, wt, b, d_out) = (
            random(&mut rng, batch * in_features),
            random(&mut rng, in_features * out_features),
            random(&mut rng, out_features),
            random(&mut rng, batch * out_features),
        );
        let (mut y, mut dx, mut dw, mut db) = (
            vec![0.0; batch * out_features],
            vec![0.0; x.len()],
            vec![0.0; wt.len()],
            vec![0.0; out_features],
        );
        let mut scratch = vec![0.0; fast::dense_scratch_len(&s)];
        fast::dense_forward(&s, &x, &wt, Some(&b), &mut y, &mut scratch);
        fast::dense_backward_input(&s, &d_out, &wt, None, &mut dx);
        fast::dense_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
        let (mut ry, mut rdx, mut rdw, mut rdb) = (
            vec![0.0; y.len()],
            vec![0.0; x.len()],
            vec![0.0; wt.len()],
            vec![0.0; out_features],
        );
        dense_forward(&s, &x, &wt, Some(&b), &mut ry);
        dense_backward_input(&s, &d_out, &wt, &mut rdx);
        dense_backward_weight(&s, &x, &d_out, &mut rdw, Some(&mut rdb));
        close(&format!("dense {s:?} output"), &y, &ry);
        close(&format!("dense {s:?} d_input"), &dx, &rdx);
        close(&format!("dense {s:?} d_weight"), &dw, &rdw);
        close(&format!("dense {s:?} d_bias"), &db, &rdb);
        let relu_out = random(&mut rng, x.len());
        let mut rdx_relu = vec![0.0; x.len()];
        relu_backward(&relu_out, &rdx, &mut rdx_relu);
        fast::dense_backward_input(&s, &d_out, &wt, Some(&relu_out), &mut dx);
        close(&format!("relu + dense {s:?} d_input"), &dx, &rdx_relu);
    }
    for &(batch, channels, h, w, window, stride) in &[
        (2, 3, 26, 26, 2, 2),
        (2, 6, 26, 26, 3, 1),
        (1, 2, 9, 7, 3, 3),
        (3, 1, 5, 5, 5, 5),
    ] {
        let s = Pool2dShape {
            batch,
            channels,
            in_height: h,
            in_width: w,
            window,
            stride,
        };
        for ties in [false, true] {
            // With ties (values from {-1, 0, 1}) the first maximum must be the one chosen.
            let x: Vec<f32> = if ties {
                (0..s.input_len())
                    .map(|_| rng.random_range(-1..=1) as f32)
                    .collect()
            } else {
                random(&mut rng, s.input_len())
            };
            let d_out = random(&mut rng, s.output_len());
            let (mut y, mut dx, mut ry, mut rdx) = (
                vec![0.0; s.output_len()],
                vec![0.0; s.input_len()],
                vec![0.0; s.output_len()],
                vec![0.0; s.input_len()],
            );
            let mut argmax = vec![0u32; s.output_len()];
            fast::max_pool2d_forward(&s, &x, &mut y, &mut argmax);
            fast::max_pool2d_backward(&s, &argmax, &d_out, None, &mut dx);
            max_pool2d_forward(&s, &x, &mut ry);
            max_pool2d_backward(&s, &x, &d_out, &mut rdx);
            close(&format!("max pool {s:?} ties {ties} output"), &y, &ry);
            close(&format!("max pool {s:?} ties {ties} d_input"), &dx, &rdx);
            // After a ReLU whose output is the pool's input x (of both signs).
            let mut rdx_relu = vec![0.0; rdx.len()];
            relu_backward(&x, &rdx, &mut rdx_relu);
            fast::max_pool2d_backward(&s, &argmax, &d_out, Some(&x), &mut dx);
            close(
                &format!("relu + max pool {s:?} ties {ties} d_input"),
                &dx,
                &rdx_relu,
            );
            fast::avg_pool2d_forward(&s, &x, &mut y);
            fast::avg_pool2d_backward(&s, &d_out, &mut dx);
            avg_pool2d_forward(&s, &x, &mut ry);
            avg_pool2d_backward(&s, &d_out, &mut rdx);
            close(&format!("avg pool {s:?} output"), &y, &ry);
            close(&format!("avg pool {s:?} d_input"), &dx, &rdx);
        }
    }
}

/// Several SGD steps of whole networks from identical weights on the same batches: the loss and
/// every parameter agree after every step, and so does the evaluation after.
#[test]
fn training_trajectories_match_the_reference() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
    let mut data = load_split(&dir, Split::Test).unwrap();
    data.truncate(52);
    for (text, batch, lr) in [
        ("conv6k3-tanh-avgpool3s1-dense32-tanh-dense10", 8, 0.05),
        ("conv16k3-tanh-dropout0.5-dense10", 8, 0.05),
        ("conv6k3-sigmoid-dense100-tanh-dense10-bce", 13, 0.5), // 52 = 4 x 13
        ("conv16k3-tanh-conv32k3-tanh-dropout0.5-dense10", 6, 0.05), // a short last batch (52 = 8 x 6 + 4)
        (
            "conv4k3-relu-conv8k3p1-relu-conv6k3p2-relu-maxpool2-dense16-relu-dense10",
            8,
            0.05,
        ), // Winograd, padding 1 and 2
        (
            "conv4k3s2p1nb-relu-maxpool3s2-dense12-sigmoid-dense10-mse",
            1,
            0.5,
        ), // batch 1
    ] {
        let net = Network::new(
            &NetSpec::parse(text).unwrap(),
            Shape {
                channels: 1,
                height: 28,
                width: 28,
            },
        )
        .unwrap();
        let params = net.init_params(5);
        let mut reference = CpuReference::new(
            net.clone(),
            params.clone(),
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            5,
        );
        let mut fast = FastCpu::new(
            net.clone(),
            params,
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            5,
            batch,
        );
        let order: Vec<u32> = (0..data.len() as u32).rev().collect();
        reference.begin_epoch(&order).unwrap();
        fast.begin_epoch(&order).unwrap();
        let sgd = Sgd { lr, momentum: 0.9 };
        let steps = data.len().div_ceil(batch).min(13);
        for step in 0..steps {
            let start = step * batch;
            let len = batch.min(data.len() - start);
            reference.train_step(start, len, step as u32, sgd).unwrap();
            fast.train_step(start, len, step as u32, sgd).unwrap();
            let (r, f) = (
                reference.take_train_metrics().unwrap(),
                fast.take_train_metrics().unwrap(),
            );
            assert_eq!(
                (r.count, r.correct),
                (f.count, f.correct),
                "{text}: step {step}"
            );
            close(
                &format!("{text}: loss of step {step}"),
                &[f.mean_loss() as f32],
                &[r.mean_loss() as f32],
            );
            for (info, (p, q)) in net.params.iter().zip(
                fast.parameters()
                    .unwrap()
                    .iter()
                    .zip(&reference.parameters().unwrap()),
            ) {
                // Parameters carry the per-step differences along: after 13 steps of lr <= 0.5 with
                // momentum 0.9 they stay below 1e-3 relative (observed ~1e-6).
                assert_close(
                    &format!("{text}: {} after step {step}", info.name),
                    p,
                    q,
                    2e-5,
                    1e-3,
                );
            }
        }
        let (r, f) = (
            reference.evaluate(Split::Test).unwrap(),
            fast.evaluate(Split::Test).unwrap(),
        );
        assert_eq!(r.correct, f.correct, "{text}: evaluation");
        close(
            &format!("{text}: evaluation loss"),
            &[f.mean_loss() as f32],
            &[r.mean_loss() as f32],
        );
        assert_eq!(fast.test_logits().unwrap().len(), data.len() * 10);
    }
}
