//! ReLU, tanh and sigmoid: the reference against finite differences and PyTorch, then every
//! executor against the reference (the fast CPU executor's vectorised tanh and sigmoid, the GPU's
//! kernels; ReLUs fused into the layers around them are tested with those layers).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;
use wgcnn::spec::Layer;

#[test]
fn activation_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let x: Vec<f64> = random_f64(&mut rng, 37).iter().map(|v| 3.0 * v).collect();
    let r = random_f64(&mut rng, 37);
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
        check_gradient(name, &x, &dx, |v| {
            let mut y = vec![0.0; v.len()];
            forward(v, &mut y);
            dot(&y, &r)
        });
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
        close_torch(&format!("{name} output"), &y, &get("output"));
        let mut dx = vec![0.0; x.len()];
        backward(&y, &get("d_output"), &mut dx);
        close_torch(&format!("{name} d_input"), &dx, &get("d_input"));
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
    for runner in runners() {
        for (batch, per_sample) in [(1, 1), (3, 1001), (64, 130)] {
            let mut x = random_scaled(&mut rng, batch * per_sample, 5.0);
            // Inputs far outside the interesting range: tanh via exp(2x) overflows here on some
            // drivers; and tiny ones, where tanh(x) ~ x must keep its relative precision.
            x[0] = 100.0;
            if x.len() > 3 {
                x[1] = -1000.0;
                x[2] = 3e-4;
                x[3] = -2e-6;
            }
            let d_out = random_scaled(&mut rng, x.len(), 1.0);
            for (name, (forward, backward)) in ops_cpu {
                let (y_run, dx_run) = runner.activation(name, batch, &x, &d_out);
                let mut y = vec![0.0; x.len()];
                forward(&x, &mut y);
                let mut dx = vec![0.0; x.len()];
                backward(&y, &d_out, &mut dx);
                let tag = format!("{name} batch {batch} x {per_sample} ({})", runner.name());
                close_tol(&format!("{tag} output"), &y_run, &y, TRANSCENDENTAL);
                close_tol(&format!("{tag} d_input"), &dx_run, &dx, TRANSCENDENTAL);
                if x.len() > 3 && name != Layer::Relu {
                    // Relative precision near zero, which an absolute tolerance would not see.
                    for i in 2..4 {
                        let rel = ((y_run[i] - y[i]) / y[i]).abs();
                        assert!(
                            rel < 1e-5,
                            "{tag}: {}({}) = {} vs. {}",
                            name,
                            x[i],
                            y_run[i],
                            y[i]
                        );
                    }
                }
            }
        }
    }
}
