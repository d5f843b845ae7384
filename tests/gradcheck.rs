//! Finite-difference checks of every backward pass of the CPU reference, in f64.
//!
//! For a layer `y = f(x, w, b)` and a fixed random `r`, take the scalar `L = sum(y * r)`. Then
//! `dL/dy = r`, so the backward pass fed with `r` must give `dL/dx`, `dL/dw` and `dL/db`; each entry
//! is compared with the central difference `(L(v + eps) - L(v - eps)) / 2 eps`.
//!
//! Tolerance: `|analytic - numeric| <= 1e-7 + 1e-6 * |numeric|`. With eps = 1e-6 in f64, the
//! central difference's truncation error is ~eps^2 * f''' ~ 1e-12 and its rounding error is
//! ~1e-16 * |L| / eps ~ 1e-10 * |L|, with |L| below ~100 for these shapes; 1e-7 covers both with
//! room, while a wrong index or a missing term gives errors of order 1e-2 or more.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::exec::reference::{network_backward, network_forward};
use wgcnn::network::{Network, Shape};
use wgcnn::ops::*;
use wgcnn::ops::{loss_backward, loss_forward};
use wgcnn::spec::{Loss, NetSpec};

const EPS: f64 = 1e-6;

fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compare `analytic` with the central differences of `loss` around `at`, entry by entry.
fn check(what: &str, at: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
    assert_eq!(at.len(), analytic.len(), "{what}: gradient length");
    let mut worst = 0.0f64;
    for i in 0..at.len() {
        let mut v = at.to_vec();
        v[i] = at[i] + EPS;
        let up = loss(&v);
        v[i] = at[i] - EPS;
        let down = loss(&v);
        let numeric = (up - down) / (2.0 * EPS);
        let diff = (analytic[i] - numeric).abs();
        worst = worst.max(diff);
        assert!(
            diff <= 1e-7 + 1e-6 * numeric.abs(),
            "{what}: failed at index {i}: analytic {} vs. numeric {numeric} (difference {diff})",
            analytic[i]
        );
    }
    assert!(worst.is_finite());
}

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
            let x = random(&mut rng, s.input_len());
            let wt = random(&mut rng, s.weight_len());
            let b = random(&mut rng, cout);
            let r = random(&mut rng, s.output_len());
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
            check(&format!("{tag} d_input"), &x, &dx, |v| loss(v, &wt, bias));
            check(&format!("{tag} d_weight"), &wt, &dw, |v| loss(&x, v, bias));
            if with_bias {
                check(&format!("{tag} d_bias"), &b, &db, |v| {
                    loss(&x, &wt, Some(v))
                });
            }
        }
    }
}

#[test]
fn pooling_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    // (batch, channels, height, width, window, stride)
    let shapes = [
        (2, 3, 7, 7, 2, 2), // odd size: the last row and column are not covered
        (1, 1, 5, 5, 3, 1), // overlapping windows (the notebook's 3x3 average pool, stride 1)
        (2, 2, 9, 8, 3, 3), // stride 3
        (1, 1, 4, 4, 4, 4), // window as large as the input
        (3, 1, 6, 5, 2, 1), // overlapping, batch 3
        (1, 2, 1, 1, 1, 1), // 1x1
    ];
    for &(batch, channels, h, w, window, stride) in &shapes {
        let s = Pool2dShape {
            batch,
            channels,
            in_height: h,
            in_width: w,
            window,
            stride,
        };
        let x = random(&mut rng, s.input_len());
        let r = random(&mut rng, s.output_len());

        let max_loss = |x: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            max_pool2d_forward(&s, x, &mut y);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; x.len()];
        max_pool2d_backward(&s, &x, &r, &mut dx);
        check(&format!("max_pool2d {s:?}"), &x, &dx, max_loss);

        let avg_loss = |x: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            avg_pool2d_forward(&s, x, &mut y);
            dot(&y, &r)
        };
        avg_pool2d_backward(&s, &r, &mut dx);
        check(&format!("avg_pool2d {s:?}"), &x, &dx, avg_loss);
    }
}

#[test]
fn max_pool_sends_the_gradient_to_the_first_maximum_of_a_tie() {
    // One 2x2 window of equal values (and one with a tie between the last two): the gradient goes
    // to the first maximum in row-major order only.
    let s = Pool2dShape {
        batch: 1,
        channels: 1,
        in_height: 2,
        in_width: 4,
        window: 2,
        stride: 2,
    };
    let x = [3.0, 3.0, 1.0, 5.0, 3.0, 3.0, 2.0, 5.0];
    let mut y = [0.0; 2];
    max_pool2d_forward(&s, &x, &mut y);
    assert_eq!(y, [3.0, 5.0]);
    let mut dx = [0.0; 8];
    max_pool2d_backward(&s, &x, &[1.0, 2.0], &mut dx);
    assert_eq!(dx, [1.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn dense_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(batch, in_features, out_features) in &[(1, 5, 3), (4, 7, 10), (3, 1, 1), (2, 33, 17)] {
        let s = DenseShape {
            batch,
            in_features,
            out_features,
        };
        let x = random(&mut rng, batch * in_features);
        let wt = random(&mut rng, out_features * in_features);
        let b = random(&mut rng, out_features);
        let r = random(&mut rng, batch * out_features);
        let loss = |x: &[f64], wt: &[f64], b: &[f64]| {
            let mut y = vec![0.0; batch * out_features];
            dense_forward(&s, x, wt, Some(b), &mut y);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; x.len()];
        dense_backward_input(&s, &r, &wt, &mut dx);
        let mut dw = vec![0.0; wt.len()];
        let mut db = vec![0.0; out_features];
        dense_backward_weight(&s, &x, &r, &mut dw, Some(&mut db));
        check(&format!("dense {s:?} d_input"), &x, &dx, |v| {
            loss(v, &wt, &b)
        });
        check(&format!("dense {s:?} d_weight"), &wt, &dw, |v| {
            loss(&x, v, &b)
        });
        check(&format!("dense {s:?} d_bias"), &b, &db, |v| {
            loss(&x, &wt, v)
        });
    }
}

#[test]
fn activation_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x: Vec<f64> = random(&mut rng, 37).iter().map(|v| 3.0 * v).collect();
    let r = random(&mut rng, 37);
    type Pair = (fn(&[f64], &mut [f64]), fn(&[f64], &[f64], &mut [f64]));
    let ops: [(&str, Pair); 3] = [
        ("relu", (relu_forward, relu_backward)),
        ("tanh", (tanh_forward, tanh_backward)),
        ("sigmoid", (sigmoid_forward, sigmoid_backward)),
    ];
    for (name, (forward, backward)) in ops {
        let mut y = vec![0.0; x.len()];
        forward(&x, &mut y);
        let mut dx = vec![0.0; x.len()];
        backward(&y, &r, &mut dx);
        check(name, &x, &dx, |v| {
            let mut y = vec![0.0; v.len()];
            forward(v, &mut y);
            dot(&y, &r)
        });
    }
}

#[test]
fn dropout_gradient_matches_finite_differences_and_keeps_the_right_fraction() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = random(&mut rng, 50);
    let r = random(&mut rng, 50);
    let (p, seed, step) = (0.3, 17, 4);
    let mut dx = vec![0.0; x.len()];
    dropout_backward(p, seed, step, &r, &mut dx);
    check("dropout", &x, &dx, |v| {
        let mut y = vec![0.0; v.len()];
        dropout_forward(p, seed, step, v, &mut y);
        dot(&y, &r)
    });

    // Over many elements the kept fraction is 1 - p and kept values are scaled by 1 / (1 - p).
    let ones = vec![1.0f64; 100_000];
    let mut y = vec![0.0; ones.len()];
    dropout_forward(0.5, 99, 12, &ones, &mut y);
    let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / y.len() as f64;
    // Binomial standard deviation at n = 1e5 is 0.0016; 0.01 is six of them.
    assert!((kept - 0.5).abs() < 0.01, "kept fraction {kept}");
    assert!(y.iter().all(|&v| v == 0.0 || v == 2.0));
    // A different step draws a different mask.
    let mut y2 = vec![0.0; ones.len()];
    dropout_forward(0.5, 99, 13, &ones, &mut y2);
    assert!(y != y2);
}

#[test]
fn loss_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let classes = 10;
    for batch in [1, 3, 8] {
        let logits: Vec<f64> = random(&mut rng, batch * classes)
            .iter()
            .map(|v| 4.0 * v)
            .collect();
        let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..10)).collect();
        for loss in [
            Loss::SoftmaxCrossEntropy,
            Loss::SigmoidBinaryCrossEntropy,
            Loss::SigmoidMeanSquaredError,
        ] {
            let d = loss_backward(loss, classes, &logits, &labels);
            check(&format!("{loss:?} batch {batch}"), &logits, &d, |v| {
                loss_forward(loss, classes, v, &labels)
            });
        }
    }
}

#[test]
fn losses_are_stable_for_large_logits() {
    // Logits of +-1000 overflow a naive exp(); the fused, shifted forms stay exact.
    let logits = [1000.0f32, -1000.0, 0.0, 999.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let ce = softmax_cross_entropy_forward(10, &logits, &[3]);
    // loss = logsumexp - z[3] = 1000 + ln(1 + e^-1 + ...) - 999, dominated by the first two terms.
    let expected = 1.0 + (1.0f64 + (-1.0f64).exp()).ln();
    assert!((ce as f64 - expected).abs() < 1e-4, "{ce} vs {expected}");
    let mut d = [0.0f32; 10];
    softmax_cross_entropy_backward(10, &logits, &[3], &mut d);
    assert!(d.iter().all(|v| v.is_finite()));
    let bce = sigmoid_binary_cross_entropy_forward(10, &logits, &[0]);
    // Label 0: z = 1000 costs nothing; z = -1000 and 999 (wrong classes) cost 0 and 999.
    assert!(
        bce.is_finite() && (bce - (999.0 + 7.0 * 2f32.ln()) / 10.0).abs() < 1e-3,
        "{bce}"
    );
    let mse = sigmoid_mean_squared_error_forward(10, &logits, &[0]);
    assert!(mse.is_finite());
}

/// The whole network, composed: a small net with every kind of layer, checked in f64 end to end.
#[test]
fn whole_network_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let specs = [
        "conv3k3s2p1-tanh-avgpool2s1-conv2k2-relu-maxpool2-dense5-sigmoid-dense4",
        "conv2k3nb-sigmoid-dropout0.4-dense6-tanh-dense4-bce",
        "conv4k2s2-maxpool2s1-dense4nb-mse",
    ];
    let input = Shape {
        channels: 1,
        height: 9,
        width: 9,
    };
    for text in specs {
        let spec = NetSpec::parse(text).unwrap();
        let net = Network::new(&spec, input).unwrap();
        let batch = 2;
        let params: Vec<Vec<f64>> = net
            .params
            .iter()
            .map(|p| random(&mut rng, p.len()))
            .collect();
        let images = random(&mut rng, batch * input.len());
        let labels = [1u8, 3];
        let dropout = Some((11, 2));
        let total_loss = |params: &[Vec<f64>]| {
            let acts = network_forward(&net, params, images.clone(), batch, dropout);
            loss_forward(net.loss(), net.classes(), acts.last().unwrap(), &labels)
        };
        let acts = network_forward(&net, &params, images.clone(), batch, dropout);
        let d_logits = loss_backward(net.loss(), net.classes(), acts.last().unwrap(), &labels);
        let grads = network_backward(&net, &params, &acts, d_logits, batch, dropout);
        for (i, info) in net.params.iter().enumerate() {
            check(
                &format!("{text}: {}", info.name),
                &params[i],
                &grads[i],
                |v| {
                    let mut p = params.clone();
                    p[i] = v.to_vec();
                    total_loss(&p)
                },
            );
        }
    }
}
