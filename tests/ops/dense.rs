//! Dense layers: the reference against finite differences and PyTorch, then every executor
//! against the reference.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;
use wgcnn::exec::gpu::plan::Fused;

#[test]
fn dense_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for &(batch, in_features, out_features) in &[(1, 5, 3), (4, 7, 10), (3, 1, 1), (2, 33, 17)] {
        let s = DenseShape {
            batch,
            in_features,
            out_features,
        };
        let x = random_f64(&mut rng, batch * in_features);
        let wt = random_f64(&mut rng, out_features * in_features);
        let b = random_f64(&mut rng, out_features);
        let r = random_f64(&mut rng, batch * out_features);
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
        check_gradient(&format!("dense {s:?} d_input"), &x, &dx, |v| {
            loss(v, &wt, &b)
        });
        check_gradient(&format!("dense {s:?} d_weight"), &wt, &dw, |v| {
            loss(&x, v, &b)
        });
        check_gradient(&format!("dense {s:?} d_bias"), &b, &db, |v| {
            loss(&x, &wt, v)
        });
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
        close_torch(&format!("{case} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        dense_backward_input(&s, &d_out, &w, &mut dx);
        close_torch(&format!("{case} d_input"), &dx, &get("d_input"));
        let mut dw = vec![0.0; w.len()];
        let mut db = vec![0.0; s.out_features];
        dense_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
        close_torch(&format!("{case} d_weight"), &dw, &get("d_weight"));
        close_torch(&format!("{case} d_bias"), &db, &get("d_bias"));
    }
}
/// Every executor's dense layer against the reference, then the fused forms where it has them.
#[test]
fn dense_matches_the_reference_on_every_executor() {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for runner in runners() {
        let (linear, _) = runner.tolerances();
        for &(batch, in_features, out_features, bias) in &[
            (1, 1352, 10, true),
            (7, 33, 17, false),
            (7, 33, 17, true),
            (3, 1, 1, true),
            (65, 100, 129, true),
            (33, 70, 40, true), // the GPU's strip-wise forward (>= 32 outputs), 3 blocks of samples
            // The fast CPU's narrow kernels (<= 16 outputs): samples in fours and a remainder,
            // inputs in 16s and a tail; and exactly 16 outputs.
            (9, 1000, 10, true),
            (6, 37, 16, false),
            // An odd number of outputs: pairs of outputs (AVX-512) and one alone.
            (5, 300, 7, true),
            // The fast CPU's wide kernel: a column block of two-vector strips, a one-vector strip
            // and single columns; tiles of 8 or 6 rows, 4 and 1 (samples and outputs).
            (9, 250, 21, true),
        ] {
            let s = DenseShape {
                batch,
                in_features,
                out_features,
            };
            let x = random_scaled(&mut rng, batch * in_features, 1.0);
            let wt = random_scaled(&mut rng, out_features * in_features, 0.1);
            let b = random_scaled(&mut rng, out_features, 1.0);
            let d_out = random_scaled(&mut rng, batch * out_features, 1.0);
            let bias = bias.then_some(&b[..]);
            let mut y = vec![0.0; batch * out_features];
            dense_forward(&s, &x, &wt, bias, &mut y);
            let mut dx = vec![0.0; batch * in_features];
            dense_backward_input(&s, &d_out, &wt, &mut dx);
            let mut dw = vec![0.0; wt.len()];
            let mut db = vec![0.0; out_features];
            dense_backward_weight(&s, &x, &d_out, &mut dw, Some(&mut db));
            let tag = format!("dense {s:?} ({})", runner.name());
            let r = runner
                .dense(&s, &x, &wt, bias, &d_out, Fused::default())
                .expect("every executor runs the plain dense layer");
            // The GPU sums in the CPU's order (only FMA contraction can differ); the fast CPU
            // executor in SGEMM's blocks.
            close_tol(&format!("{tag} output"), &r.output, &y, linear);
            close_tol(&format!("{tag} d_input"), &r.d_input, &dx, linear);
            close_tol(&format!("{tag} d_weight"), &r.d_weight, &dw, linear);
            if bias.is_some() || runner.name() == "fast CPU" {
                close_tol(&format!("{tag} d_bias"), &r.d_bias, &db, linear);
            }
            let run = |fused| runner.dense(&s, &x, &wt, bias, &d_out, fused);
            check_relu_fusions(&tag, linear, (&x, &y, &dx), run);
        }
    }
}
