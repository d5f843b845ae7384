//! Max and average pooling: the reference against finite differences and PyTorch, then every
//! executor against the reference.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;

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
        let x = random_f64(&mut rng, s.input_len());
        let r = random_f64(&mut rng, s.output_len());

        let max_loss = |x: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            max_pool2d_forward(&s, x, &mut y);
            dot(&y, &r)
        };
        let mut dx = vec![0.0; x.len()];
        max_pool2d_backward(&s, &x, &r, &mut dx);
        check_gradient(&format!("max_pool2d {s:?}"), &x, &dx, max_loss);

        let avg_loss = |x: &[f64]| {
            let mut y = vec![0.0; s.output_len()];
            avg_pool2d_forward(&s, x, &mut y);
            dot(&y, &r)
        };
        avg_pool2d_backward(&s, &r, &mut dx);
        check_gradient(&format!("avg_pool2d {s:?}"), &x, &dx, avg_loss);
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
            close_torch(&format!("{case} {s:?} output"), &y, &get("output"));
            close_torch(&format!("{case} d_input"), &dx, &get("d_input"));
        }
    }
}
/// Every executor's pooling against the reference, with and without ties (values from {-1, 0,
/// 1}: many windows hold equal maxima, and every executor must pick the first one as the
/// reference does), and max pooling after a ReLU whose mask the pooling applies.
#[test]
fn pooling_matches_the_reference_on_every_executor_including_ties() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    // (batch, channels, height, width, window, stride)
    let shapes = [
        (2, 3, 26, 26, 2, 2), // max pool 2 after a 3x3 conv
        (2, 6, 26, 26, 3, 1), // the notebook's 3x3 average pool at stride 1
        (1, 2, 9, 7, 3, 3),   // stride 3, odd sizes (edge rows and columns in no window)
        (3, 1, 5, 5, 5, 5),   // window as large as the input
        (2, 1, 7, 7, 3, 2),   // overlapping windows, stride 2
        (1, 1, 1, 1, 1, 1),
    ];
    for runner in runners() {
        let (linear, _) = runner.tolerances();
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
                let x: Vec<f32> = if ties {
                    (0..s.input_len())
                        .map(|_| rng.random_range(-1..=1) as f32)
                        .collect()
                } else {
                    random_f32(&mut rng, s.input_len())
                };
                let d_out = random_f32(&mut rng, s.output_len());
                for max in [true, false] {
                    let mut y = vec![0.0; s.output_len()];
                    let mut dx = vec![0.0; s.input_len()];
                    if max {
                        max_pool2d_forward(&s, &x, &mut y);
                        max_pool2d_backward(&s, &x, &d_out, &mut dx);
                    } else {
                        avg_pool2d_forward(&s, &x, &mut y);
                        avg_pool2d_backward(&s, &d_out, &mut dx);
                    }
                    let kind = if max { "max_pool2d" } else { "avg_pool2d" };
                    let tag = format!("{kind} {s:?} ties {ties} ({})", runner.name());
                    let (y_run, dx_run) = runner
                        .pool2d(max, &s, &x, &d_out, false)
                        .expect("every executor runs plain pooling");
                    close_tol(&format!("{tag} output"), &y_run, &y, linear);
                    close_tol(&format!("{tag} d_input"), &dx_run, &dx, linear);
                    // After a ReLU whose output is the pool's input x (of both signs).
                    if let Some((_, dx_run)) = runner.pool2d(max, &s, &x, &d_out, true) {
                        let mut masked = vec![0.0; dx.len()];
                        relu_backward(&x, &dx, &mut masked);
                        close_tol(&format!("ReLU + {tag} d_input"), &dx_run, &masked, linear);
                    }
                }
            }
        }
    }
}
