//! The CPU reference against values computed by PyTorch (`tests/fixtures/make_fixtures.py`).
//!
//! Tolerance for single layers: `|ours - torch| <= 5e-5 + 1e-4 * |torch|`. Both sides compute in
//! f32 but sum in different orders (PyTorch uses blocked SGEMM / vectorised reductions, we use
//! plain loops). The largest sums here have 1352 terms of magnitude <= 1; the worst-case
//! reordering error n * eps * sum|terms| is ~1e-5 absolute, far below 5e-5, while a wrong index,
//! a missing tap or a wrong scale shows up at 1e-2 or more.

mod common;

use common::{assert_close, Fixture};
use wgcnn::data::{Dataset, Normalization};
use wgcnn::exec::reference::CpuReference;
use wgcnn::exec::{Executor, Sgd};
use wgcnn::network::{Network, Shape};
use wgcnn::ops::*;
use wgcnn::ops::{loss_backward, loss_forward};
use wgcnn::spec::{Loss, NetSpec};

const ATOL: f32 = 5e-5;
const RTOL: f32 = 1e-4;

fn close(what: &str, actual: &[f32], expected: &[f32]) {
    assert_close(what, actual, expected, ATOL, RTOL);
}

#[test]
fn fixtures_record_the_torch_version_that_made_them() {
    let f = Fixture::load("layers.safetensors");
    assert!(
        f.metadata("torch_version").starts_with('2'),
        "{}",
        f.metadata("torch_version")
    );
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
        close(&format!("{case} {s:?} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        conv2d_backward_input(&s, &d_out, &w, &mut dx);
        close(&format!("{case} d_input"), &dx, &get("d_input"));
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; s.out_channels];
        conv2d_backward_weight(&s, &x, &d_out, &mut dw, has_bias.then_some(&mut db[..]));
        close(&format!("{case} d_weight"), &dw, &get("d_weight"));
        if has_bias {
            close(&format!("{case} d_bias"), &db, &get("d_bias"));
        }
        cases += 1;
    }
    assert_eq!(cases, 5);
}

#[test]
fn pooling_matches_pytorch() {
    let f = Fixture::load("layers.safetensors");
    for i in 0..4 {
        for kind in ["max_pool2d", "avg_pool2d"] {
            let case = format!("{kind}.{i}");
            let c = f.usize(&format!("{case}.config"));
            let s = Pool2dShape {
                batch: c[0],
                channels: c[1],
                in_height: c[2],
                in_width: c[3],
                window: c[4],
                stride: c[5],
            };
            let get = |k: &str| f.f32(&format!("{case}.{k}"));
            let (x, d_out) = (get("input"), get("d_output"));
            let mut y = vec![0.0; s.output_len()];
            let mut dx = vec![0.0; x.len()];
            if kind == "max_pool2d" {
                max_pool2d_forward(&s, &x, &mut y);
                max_pool2d_backward(&s, &x, &d_out, &mut dx);
            } else {
                avg_pool2d_forward(&s, &x, &mut y);
                avg_pool2d_backward(&s, &d_out, &mut dx);
            }
            close(&format!("{case} {s:?} output"), &y, &get("output"));
            close(&format!("{case} d_input"), &dx, &get("d_input"));
        }
    }
}

#[test]
fn dense_matches_pytorch() {
    let f = Fixture::load("layers.safetensors");
    for i in 0..3 {
        let case = format!("dense.{i}");
        let c = f.usize(&format!("{case}.config"));
        let s = DenseShape {
            batch: c[0],
            in_features: c[1],
            out_features: c[2],
        };
        let get = |k: &str| f.f32(&format!("{case}.{k}"));
        let (x, w, b, d_out) = (get("input"), get("weight"), get("bias"), get("d_output"));
        let mut y = vec![0.0; s.batch * s.out_features];
        dense_forward(&s, &x, &w, Some(&b), &mut y);
        close(&format!("{case} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        dense_backward_input(&s, &d_out, &w, &mut dx);
        close(&format!("{case} d_input"), &dx, &get("d_input"));
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; s.out_features];
        dense_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
        close(&format!("{case} d_weight"), &dw, &get("d_weight"));
        close(&format!("{case} d_bias"), &db, &get("d_bias"));
    }
}

#[test]
fn activations_match_pytorch() {
    let f = Fixture::load("layers.safetensors");
    type Pair = (fn(&[f32], &mut [f32]), fn(&[f32], &[f32], &mut [f32]));
    let ops: [(&str, Pair); 3] = [
        ("relu", (relu_forward, relu_backward)),
        ("tanh", (tanh_forward, tanh_backward)),
        ("sigmoid", (sigmoid_forward, sigmoid_backward)),
    ];
    for (name, (forward, backward)) in ops {
        let get = |k: &str| f.f32(&format!("{name}.{k}"));
        let x = get("input");
        let mut y = vec![0.0; x.len()];
        forward(&x, &mut y);
        close(&format!("{name} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        backward(&y, &get("d_output"), &mut dx);
        close(&format!("{name} d_input"), &dx, &get("d_input"));
    }
}

#[test]
fn dropout_hash_and_mask_match_the_python_port() {
    let f = Fixture::load("layers.safetensors");
    // The hash is integer arithmetic: the uniforms must agree exactly.
    let idx = f.i64("hash.index");
    let expected = f.f32("hash.uniform");
    for (i, &index) in idx.iter().enumerate() {
        assert_eq!(
            dropout_uniform(99, 3, index as u32),
            expected[i],
            "hash at index {index}"
        );
    }
    let c = f.usize("dropout.config");
    let p = f.f32("dropout.p")[0];
    let (x, d_out) = (f.f32("dropout.input"), f.f32("dropout.d_output"));
    let mut y = vec![0.0; x.len()];
    dropout_forward(p, c[0] as u32, c[1] as u32, &x, &mut y);
    close("dropout output", &y, &f.f32("dropout.output"));
    let mut dx = vec![0.0; x.len()];
    dropout_backward(p, c[0] as u32, c[1] as u32, &d_out, &mut dx);
    close("dropout d_input", &dx, &f.f32("dropout.d_input"));
}

#[test]
fn losses_match_pytorch_including_huge_logits() {
    let f = Fixture::load("layers.safetensors");
    for i in 0..2 {
        let logits = f.f32(&format!("loss.{i}.logits"));
        let labels = f.u8(&format!("loss.{i}.labels"));
        for (name, loss) in [
            ("softmax_cross_entropy", Loss::SoftmaxCrossEntropy),
            ("sigmoid_bce", Loss::SigmoidBinaryCrossEntropy),
            ("sigmoid_mse", Loss::SigmoidMeanSquaredError),
        ] {
            let case = format!("loss.{i}.{name}");
            let value = loss_forward(loss, 10, &logits, &labels);
            // Losses of logits up to 500 are of order 100: the relative term covers them.
            close(
                &format!("{case} loss"),
                &[value],
                &f.f32(&format!("{case}.loss")),
            );
            let d = loss_backward(loss, 10, &logits, &labels);
            close(
                &format!("{case} d_logits"),
                &d,
                &f.f32(&format!("{case}.d_logits")),
            );
        }
    }
}

/// Two SGD steps (momentum 0.9) of whole presets: losses, first-step gradients of every
/// parameter, and every parameter after both steps.
///
/// Tolerance: as for layers. After two steps, parameters differ from PyTorch's by lr times the
/// gradient differences (at most ~1e-5 with lr <= 0.5), well inside 5e-5.
#[test]
fn training_steps_match_pytorch() {
    let f = Fixture::load("steps.safetensors");
    for name in ["tanh-avgpool", "dropout", "relu-maxpool-bce"] {
        let spec = NetSpec::parse(&f.metadata(&format!("{name}.spec"))).unwrap();
        let net = Network::new(
            &spec,
            Shape {
                channels: 1,
                height: 28,
                width: 28,
            },
        )
        .unwrap();
        let hyper = f.f32(&format!("{name}.hyper"));
        let sgd = Sgd {
            lr: hyper[0],
            momentum: hyper[1],
        };
        let seed = hyper[2] as u64;
        let pixels = f.u8(&format!("{name}.pixels"));
        let labels = f.u8(&format!("{name}.labels"));
        let batch = labels.len();
        let data = Dataset {
            images: pixels,
            labels,
            source: "fixture".into(),
        };
        let init: Vec<Vec<f32>> = net
            .params
            .iter()
            .map(|p| f.f32(&format!("{name}.init.{}", p.name)))
            .collect();
        let mut exec = CpuReference::new(
            net.clone(),
            init,
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            seed,
        );

        // Gradients of the first step, before any update.
        let order: Vec<u32> = (0..batch as u32).collect();
        let (images, labels) = wgcnn::ops::gather_batch(&data, &order, Normalization::UNIT);
        let (_, _, grads) = exec.forward_backward(images, &labels, 0);
        for (p, g) in net.params.iter().zip(&grads) {
            close(
                &format!("{name} step 0 gradient {}", p.name),
                g,
                &f.f32(&format!("{name}.grad.{}", p.name)),
            );
        }

        let expected_losses = f.f32(&format!("{name}.losses"));
        exec.begin_epoch(&order).unwrap();
        for (step, &expected) in expected_losses.iter().enumerate() {
            exec.train_step(0, batch, step as u32, sgd).unwrap();
            let m = exec.take_train_metrics().unwrap();
            close(
                &format!("{name} loss of step {step}"),
                &[m.mean_loss() as f32],
                &[expected],
            );
        }
        let after = exec.parameters().unwrap();
        for (p, value) in net.params.iter().zip(&after) {
            close(
                &format!("{name} {} after 2 steps", p.name),
                value,
                &f.f32(&format!("{name}.after.{}", p.name)),
            );
        }
    }
}
