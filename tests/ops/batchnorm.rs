//! Batch normalization: the reference against finite differences and PyTorch (forward, backward,
//! running statistics after several steps, evaluation mode), then every executor against the
//! reference.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;

/// `L = sum(y * r)` of the training pass, differentiated through the batch statistics.
#[test]
fn batch_norm_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for s in [
        BatchNormShape {
            batch: 3,
            channels: 2,
            spatial: 5,
        },
        BatchNormShape {
            batch: 4,
            channels: 3,
            spatial: 1,
        },
    ] {
        let len = s.batch * s.channels * s.spatial;
        let x: Vec<f64> = random_f64(&mut rng, len)
            .iter()
            .map(|v| 2.0 * v + 0.3)
            .collect();
        let w: Vec<f64> = random_f64(&mut rng, s.channels)
            .iter()
            .map(|v| v + 1.5)
            .collect();
        let b = random_f64(&mut rng, s.channels);
        let r = random_f64(&mut rng, len);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| {
            let mut y = vec![0.0; len];
            batchnorm_forward(&s, x, w, b, &mut y);
            dot(&y, &r)
        };
        let (mut dx, mut dw, mut db) =
            (vec![0.0; len], vec![0.0; s.channels], vec![0.0; s.channels]);
        batchnorm_backward(&s, &x, &r, &w, Some(&mut dx), &mut dw, &mut db);
        let tag = format!("batchnorm {s:?}");
        check_gradient(&format!("{tag} d_input"), &x, &dx, |v| loss(v, &w, &b));
        check_gradient(&format!("{tag} d_weight"), &w, &dw, |v| loss(&x, v, &b));
        check_gradient(&format!("{tag} d_bias"), &b, &db, |v| loss(&x, &w, v));
    }
}

/// PyTorch's BatchNorm2d and BatchNorm1d: a training step's output and gradients, the running
/// statistics after three steps, and an evaluation pass with them (`make_norm_fixtures.py`).
#[test]
fn batch_norm_matches_pytorch() {
    let f = Fixture::load("norm.safetensors");
    for (case, shape) in [
        ("bn2d", (3, 4, 30)),
        ("bn1d", (5, 7, 1)),
        ("bn2d_one", (1, 3, 16)),
    ] {
        let s = BatchNormShape {
            batch: shape.0,
            channels: shape.1,
            spatial: shape.2,
        };
        let get = |k: &str| f.f32(&format!("{case}.{k}"));
        let (w, b, xs) = (get("weight"), get("bias"), get("x"));
        let len = s.batch * s.channels * s.spatial;
        assert_eq!(xs.len(), 3 * len, "{case}: fixture shape");
        let x = &xs[..len];
        let mut y = vec![0.0; len];
        batchnorm_forward(&s, x, &w, &b, &mut y);
        close_torch(&format!("{case} output"), &y, &get("output"));
        let (mut dx, mut dw, mut db) =
            (vec![0.0; len], vec![0.0; s.channels], vec![0.0; s.channels]);
        batchnorm_backward(&s, x, &get("d_output"), &w, Some(&mut dx), &mut dw, &mut db);
        close_torch(&format!("{case} d_input"), &dx, &get("d_input"));
        close_torch(&format!("{case} d_weight"), &dw, &get("d_weight"));
        close_torch(&format!("{case} d_bias"), &db, &get("d_bias"));
        let (mut mean, mut var) = (vec![0.0; s.channels], vec![1.0; s.channels]);
        for step in xs.chunks(len) {
            batchnorm_update_running(&s, step, &mut mean, &mut var);
        }
        close_torch(&format!("{case} running_mean"), &mean, &get("running_mean"));
        close_torch(&format!("{case} running_var"), &var, &get("running_var"));
        let mut y_eval = vec![0.0; len];
        batchnorm_forward_eval(&s, &get("eval_x"), &w, &b, &mean, &var, &mut y_eval);
        close_torch(&format!("{case} eval output"), &y_eval, &get("eval_output"));
    }
}

/// Every executor against the reference computed in f64 (so the comparison sees the executor's
/// rounding only).
///
/// Tolerances: outputs and input gradients are elementwise formulas of values of magnitude <= ~5
/// with the channel's statistics: a relative error of ~1e-6 in the mean or 1/std moves them by
/// ~1e-5, inside 1e-4 + 1e-4 |v|; a coefficient 0.1% off moves them by ~1e-3 and fails. The
/// weight and bias gradients are sums over batch x positions (up to 8100 terms of magnitude <= ~5):
/// f32 partial sums in another order differ by ~sqrt(terms) ULP of the sum of magnitudes, ~1e-4
/// here, inside 1e-3 + 1e-4 |v|, while 0.1% of a typical sum (~50) is 5e-2.
const NORM: (f32, f32) = (1e-4, 1e-4);
const NORM_SUMS: (f32, f32) = (1e-3, 1e-4);

#[test]
fn batch_norm_matches_the_cpu_reference_on_every_executor() {
    let mut rng = ChaCha8Rng::seed_from_u64(22);
    let shapes = [
        (1, 3, 35),   // batch 1: the statistics over one sample's positions
        (17, 5, 143), // awkward sizes
        (9, 2, 900),  // 8100 values a channel: many strides of a 256-thread reduction
        (3, 10, 1),   // flat (BatchNorm1d)
        (64, 130, 1), // flat, more features than a workgroup's threads
    ];
    for runner in runners() {
        for &(batch, channels, spatial) in &shapes {
            let s = BatchNormShape {
                batch,
                channels,
                spatial,
            };
            let len = batch * channels * spatial;
            let x: Vec<f32> = random_f32(&mut rng, len)
                .iter()
                .map(|v| 2.0 * v + 0.5)
                .collect();
            let w: Vec<f32> = random_f32(&mut rng, channels)
                .iter()
                .map(|v| v + 1.2)
                .collect();
            let b = random_f32(&mut rng, channels);
            let d_y = random_f32(&mut rng, len);
            let mean0 = random_f32(&mut rng, channels);
            let var0: Vec<f32> = random_f32(&mut rng, channels)
                .iter()
                .map(|v| v + 1.5)
                .collect();

            let f64s = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
            let (x64, w64, b64, dy64) = (f64s(&x), f64s(&w), f64s(&b), f64s(&d_y));
            let mut y = vec![0.0; len];
            batchnorm_forward(&s, &x64, &w64, &b64, &mut y);
            let (mut dx, mut dw, mut db) =
                (vec![0.0; len], vec![0.0; channels], vec![0.0; channels]);
            batchnorm_backward(&s, &x64, &dy64, &w64, Some(&mut dx), &mut dw, &mut db);
            let (mut mean, mut var) = (f64s(&mean0), f64s(&var0));
            batchnorm_update_running(&s, &x64, &mut mean, &mut var);
            let mut y_eval = vec![0.0; len];
            batchnorm_forward_eval(&s, &x64, &w64, &b64, &mean, &var, &mut y_eval);

            let got = runner.batch_norm(&s, &x, &w, &b, &d_y, (&mean0, &var0));
            let tag = format!("batchnorm {batch}x{channels}x{spatial} ({})", runner.name());
            close_tol(&format!("{tag} output"), &got.layer.output, &f32s(&y), NORM);
            close_tol(
                &format!("{tag} d_input"),
                &got.layer.d_input,
                &f32s(&dx),
                NORM,
            );
            close_tol(
                &format!("{tag} d_weight"),
                &got.layer.d_weight,
                &f32s(&dw),
                NORM_SUMS,
            );
            close_tol(
                &format!("{tag} d_bias"),
                &got.layer.d_bias,
                &f32s(&db),
                NORM_SUMS,
            );
            close_tol(
                &format!("{tag} running_mean"),
                &got.running_mean,
                &f32s(&mean),
                NORM,
            );
            close_tol(
                &format!("{tag} running_var"),
                &got.running_var,
                &f32s(&var),
                NORM,
            );
            close_tol(
                &format!("{tag} eval output"),
                &got.eval_output,
                &f32s(&y_eval),
                NORM,
            );
        }
    }
}
