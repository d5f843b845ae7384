//! Losses: the reference against finite differences and PyTorch (huge logits included), then the
//! GPU's fused loss, gradient and metrics against the reference (the fast CPU executor runs the
//! reference functions themselves).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;
use wgcnn::spec::Loss;

#[test]
fn loss_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let classes = 10;
    for batch in [1, 3, 8] {
        let logits: Vec<f64> = random_f64(&mut rng, batch * classes)
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
            check_gradient(&format!("{loss:?} batch {batch}"), &logits, &d, |v| {
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
            close_torch(
                &format!("{case} loss"),
                &[value],
                &f.f32(&format!("{case}.loss")),
            );
            let d = loss_backward(loss, 10, &logits, &labels);
            close_torch(
                &format!("{case} d_logits"),
                &d,
                &f.f32(&format!("{case}.d_logits")),
            );
        }
    }
}
#[test]
fn losses_and_metrics_match_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let classes = 10;
    for (grid, ops) in gpu_ops() {
        // 300 samples: more than the 256 threads of the metrics reduction.
        for (batch, scale) in [(1, 3.0), (5, 3.0), (300, 5.0), (4, 500.0)] {
            let logits = random_scaled(&mut rng, batch * classes, scale);
            let labels: Vec<u8> = (0..batch).map(|_| rng.random_range(0..10)).collect();
            for loss in [
                Loss::SoftmaxCrossEntropy,
                Loss::SigmoidBinaryCrossEntropy,
                Loss::SigmoidMeanSquaredError,
            ] {
                let gpu = ops.loss(loss, classes, &logits, &labels, 3).unwrap();
                let tag = format!("{loss:?} batch {batch} scale {scale} ({grid})");
                let d = loss_backward(loss, classes, &logits, &labels);
                close_tol(
                    &format!("{tag} d_logits"),
                    &gpu.d_logits,
                    &d,
                    TRANSCENDENTAL,
                );
                for n in 0..batch {
                    let row = &logits[n * classes..(n + 1) * classes];
                    let cpu = loss_forward(loss, classes, row, &labels[n..n + 1]);
                    // Losses of logits up to 500 reach ~500: the relative term matters there.
                    close_tol(
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
                close_tol(
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
        let mut logits = random_scaled(&mut rng, 2 * classes, 1.0);
        logits[3] = f32::NAN;
        let gpu = ops
            .loss(Loss::SoftmaxCrossEntropy, classes, &logits, &[1, 2], 42)
            .unwrap();
        assert_eq!(gpu.first_bad_step, 42, "({grid})");
    }
}
