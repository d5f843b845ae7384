//! Dropout: the reference against finite differences and the Python port of its hash, then the
//! GPU's masks against the reference's.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;

#[test]
fn dropout_gradient_matches_finite_differences_and_keeps_the_right_fraction() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = random_f64(&mut rng, 50);
    let r = random_f64(&mut rng, 50);
    let (p, seed, step) = (0.3, 17, 4);
    let mut dx = vec![0.0; x.len()];
    dropout_backward(p, seed, step, &r, &mut dx);
    check_gradient("dropout", &x, &dx, |v| {
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
    close_torch("dropout output", &y, &f.f32("dropout.output"));
    let mut dx = vec![0.0; x.len()];
    dropout_backward(p, c[0] as u32, c[1] as u32, &d_out, &mut dx);
    close_torch("dropout d_input", &dx, &f.f32("dropout.d_input"));
}
#[test]
fn dropout_masks_are_identical_to_the_cpu() {
    let mut rng = ChaCha8Rng::seed_from_u64(14);
    for (grid, ops) in gpu_ops() {
        for &(p, seed, step, batch, per_sample) in &[
            (0.5, 1u32, 0u32, 4, 100),
            (0.3, 77, 12345, 1, 7),
            (0.9, 3, 2, 9, 33),
        ] {
            let x = random_scaled(&mut rng, batch * per_sample, 1.0);
            let d_out = random_scaled(&mut rng, x.len(), 1.0);
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
            close_tol(&format!("{tag} output"), &y_gpu, &y, TRANSCENDENTAL);
            close_tol(&format!("{tag} d_input"), &dx_gpu, &dx, TRANSCENDENTAL);
            // At evaluation, dropout is the identity.
            let (y_eval, _) = ops.dropout(p, seed, step, false, &x, &d_out).unwrap();
            assert_eq!(y_eval, x);
        }
    }
}
