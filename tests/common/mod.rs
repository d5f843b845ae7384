//! Helpers shared by the integration tests: reading fixture files and comparing tensors.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use safetensors::{Dtype, SafeTensors};

/// Fashion-MNIST's classes, by label, as Zalando names them (`assets/fashion-mnist/classes.txt`).
pub const FASHION: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

/// A safetensors fixture from `tests/fixtures/`, made by `make_fixtures.py`.
pub struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    pub fn load(name: &str) -> Fixture {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Fixture { bytes }
    }

    fn view(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).expect("fixture is valid safetensors")
    }

    pub fn has(&self, key: &str) -> bool {
        self.view().tensor(key).is_ok()
    }

    pub fn keys(&self) -> Vec<String> {
        self.view()
            .names()
            .into_iter()
            .map(|s| s.to_string())
            .collect()
    }

    pub fn f32(&self, key: &str) -> Vec<f32> {
        let view = self.view();
        let t = view
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture has no tensor {key}"));
        assert_eq!(t.dtype(), Dtype::F32, "{key}");
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn f64(&self, key: &str) -> Vec<f64> {
        let view = self.view();
        let t = view
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture has no tensor {key}"));
        assert_eq!(t.dtype(), Dtype::F64, "{key}");
        t.data()
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    pub fn i64(&self, key: &str) -> Vec<i64> {
        let view = self.view();
        let t = view
            .tensor(key)
            .unwrap_or_else(|_| panic!("fixture has no tensor {key}"));
        match t.dtype() {
            Dtype::I64 => t
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I32 => t
                .data()
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().unwrap()) as i64)
                .collect(),
            Dtype::U8 => t.data().iter().map(|&b| b as i64).collect(),
            other => panic!("{key}: unexpected dtype {other:?}"),
        }
    }

    pub fn usize(&self, key: &str) -> Vec<usize> {
        self.i64(key).into_iter().map(|v| v as usize).collect()
    }

    pub fn u8(&self, key: &str) -> Vec<u8> {
        self.i64(key).into_iter().map(|v| v as u8).collect()
    }

    pub fn metadata(&self, key: &str) -> String {
        let (_, meta) = SafeTensors::read_metadata(&self.bytes).unwrap();
        meta.metadata()
            .as_ref()
            .and_then(|m| m.get(key).cloned())
            .unwrap_or_else(|| panic!("no metadata {key}"))
    }
}

/// Assert `|actual - expected| <= atol + rtol * |expected|` everywhere. On failure, report the
/// first failing index with both values, and the largest difference over the whole tensor.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs. expected {}",
        actual.len(),
        expected.len()
    );
    let mut first_bad = None;
    let mut max_diff = 0.0f32;
    let mut max_at = 0;
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        let diff = (a - e).abs();
        if diff > max_diff || diff.is_nan() {
            max_diff = diff;
            max_at = i;
        }
        // Written negated on purpose: a NaN difference fails.
        #[allow(clippy::neg_cmp_op_on_partial_ord)]
        let within = diff <= atol + rtol * e.abs();
        if first_bad.is_none() && !within {
            first_bad = Some(i);
        }
    }
    if let Some(i) = first_bad {
        panic!(
            "{what}: failed at index {i}: computed {} vs. expected {} (largest difference {max_diff} at index {max_at}; tolerance {atol} + {rtol} * |expected|)",
            actual[i], expected[i]
        );
    }
}

/// Run the wgcnn binary from the crate root.
pub fn wgcnn(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("the binary runs")
}

/// Its stdout and stderr as text.
pub fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Random tensors, comparisons and tolerances shared by the op and network tests
// ---------------------------------------------------------------------------------------------

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Uniform values in [-scale, scale).
pub fn random_scaled(rng: &mut ChaCha8Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..scale)).collect()
}

/// Uniform values in [-1, 1).
pub fn random_f32(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
    random_scaled(rng, len, 1.0)
}

/// Uniform values in [-1, 1), in f64 for the gradient checks.
pub fn random_f64(rng: &mut ChaCha8Rng, len: usize) -> Vec<f64> {
    (0..len).map(|_| rng.random_range(-1.0..1.0)).collect()
}

/// [`assert_close`] with an `(atol, rtol)` pair.
pub fn close_tol(what: &str, actual: &[f32], expected: &[f32], tol: (f32, f32)) {
    assert_close(what, actual, expected, tol.0, tol.1);
}

/// GPU against the reference, sums of products in a different order: relative error grows like
/// sqrt(terms) * 6e-8; with a few hundred terms of magnitude <= 1 that stays under 1e-5 absolute.
/// A wrong index is off by 1e-1, a coefficient 0.1% off fails it (checked by mutation).
pub const LINEAR: (f32, f32) = (2e-5, 1e-4);
/// exp, log, tanh and division are accurate to a few ULP in WGSL, not correctly rounded.
pub const TRANSCENDENTAL: (f32, f32) = (1e-5, 1e-4);
/// Weight gradients sum batch x output positions (up to 3600 terms in the op tests): split-K,
/// tree or blocked order against sequential gives relative differences of ~1e-6 of the sum of
/// magnitudes.
pub const REDUCTION: (f32, f32) = (1e-4, 1e-4);
/// The fast CPU executor against the reference: both are f32; SGEMM sums in blocks and with fused
/// multiply-adds (AVX2/AVX-512), the reference sequentially, so sums of n products differ by
/// ~sqrt(n) ULP of their magnitude. The largest sums here have ~3600 terms of magnitude <= 1: 1e-4
/// absolute covers them; a wrong index or a missing tap is off by 1e-1. Winograd adds a few ULP of
/// its transforms' partial sums (each a sum of at most 16 inputs or products times 1/2 or 1/4),
/// well inside the same bound; a 0.1% error in one transform coefficient fails it (checked by
/// mutation).
pub const FAST_CPU: (f32, f32) = (1e-4, 1e-4);

/// The fast CPU executor's comparison ([`FAST_CPU`]).
pub fn close_fast(what: &str, fast: &[f32], reference: &[f32]) {
    close_tol(what, fast, reference, FAST_CPU);
}

/// Single layers against PyTorch: `|ours - torch| <= 5e-5 + 1e-4 * |torch|`. Both sides compute
/// in f32 but sum in different orders (PyTorch uses blocked SGEMM / vectorised reductions, we use
/// plain loops). The largest sums here have 1352 terms of magnitude <= 1; the worst-case
/// reordering error n * eps * sum|terms| is ~1e-5 absolute, far below 5e-5, while a wrong index,
/// a missing tap or a wrong scale shows up at 1e-2 or more.
pub const TORCH: (f32, f32) = (5e-5, 1e-4);

pub fn close_torch(what: &str, actual: &[f32], expected: &[f32]) {
    close_tol(what, actual, expected, TORCH);
}

/// The first `n` MNIST test images.
pub fn mnist_subset(n: usize) -> wgcnn::data::Dataset {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist");
    let mut set = wgcnn::data::load_split(&dir, wgcnn::data::Split::Test).unwrap();
    set.truncate(n);
    set
}

// ---------------------------------------------------------------------------------------------
// Finite differences (f64): every backward pass of the reference is checked this way
// ---------------------------------------------------------------------------------------------

/// For a layer `y = f(x, w, b)` and a fixed random `r`, take the scalar `L = sum(y * r)`. Then
/// `dL/dy = r`, so the backward pass fed with `r` must give `dL/dx`, `dL/dw` and `dL/db`; each
/// entry is compared with the central difference `(L(v + eps) - L(v - eps)) / 2 eps`.
///
/// Tolerance: `|analytic - numeric| <= 1e-7 + 1e-6 * |numeric|`. With eps = 1e-6 in f64, the
/// central difference's truncation error is ~eps^2 * f''' ~ 1e-12 and its rounding error is
/// ~1e-16 * |L| / eps ~ 1e-10 * |L|, with |L| below ~100 for these shapes; 1e-7 covers both with
/// room, while a wrong index or a missing term gives errors of order 1e-2 or more.
pub const EPS: f64 = 1e-6;

pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Compare `analytic` with the central differences of `loss` around `at`, entry by entry.
pub fn check_gradient(what: &str, at: &[f64], analytic: &[f64], loss: impl Fn(&[f64]) -> f64) {
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

// ---------------------------------------------------------------------------------------------
// Executors: the GPU device, and one op runner per executor
// ---------------------------------------------------------------------------------------------

use std::sync::{Arc, OnceLock};

use wgcnn::exec::fast::kernels as fast;
use wgcnn::exec::gpu::ops::{LayerResult, NormResult, Ops};
use wgcnn::exec::gpu::plan::Fused;
use wgcnn::exec::gpu::{AdapterChoice, Gpu, Kernels};
use wgcnn::ops::{BatchNormShape, Conv2dShape, DenseShape, Pool2dShape};
use wgcnn::spec::Layer;

pub struct Device {
    pub gpu: Arc<Gpu>,
    pub kernels: Arc<Kernels>,
    /// The same pipelines, limited to 3 workgroups per grid dimension: every flat dispatch of a
    /// non-trivial shape then runs on a 2-D grid.
    pub small_grid: Arc<Kernels>,
}

/// The GPU the tests run on. Without an adapter (a software one will do: `apt-get install
/// mesa-vulkan-drivers`) the GPU variants skip with a message, unless `WGCNN_REQUIRE_GPU=1` (as
/// in CI), where a missing adapter fails them.
pub fn device() -> Option<&'static Device> {
    static DEVICE: OnceLock<Option<Device>> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            if !executor_wanted("gpu") {
                return None;
            }
            match Gpu::new(&AdapterChoice::default()) {
                Ok(gpu) => {
                    let gpu = Arc::new(gpu);
                    eprintln!("GPU tests run on {}", gpu.describe());
                    let kernels = Arc::new(Kernels::new(&gpu).expect("pipelines build"));
                    let mut small = Kernels::new(&gpu).expect("pipelines build");
                    small.set_max_groups_per_dimension(3);
                    Some(Device {
                        gpu,
                        kernels,
                        small_grid: Arc::new(small),
                    })
                }
                Err(e) => {
                    if std::env::var("WGCNN_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                        panic!("WGCNN_REQUIRE_GPU=1 but no GPU adapter could be opened: {e:#}");
                    }
                    eprintln!("skipping the GPU tests: no GPU adapter ({e:#})");
                    None
                }
            }
        })
        .as_ref()
}

/// `WGCNN_TEST_EXECUTORS=fast` (or `gpu`) runs the executor-parameterised tests on those
/// executors only (CI reruns the fast CPU executor's on each instruction set); default: all.
pub fn executor_wanted(name: &str) -> bool {
    match std::env::var("WGCNN_TEST_EXECUTORS") {
        Ok(list) if !list.is_empty() => list.split(',').any(|e| e.trim() == name),
        _ => true,
    }
}

/// The GPU's op runners: the device's real grid limit, and the tiny one that forces 2-D grids.
pub fn gpu_ops() -> Vec<(&'static str, Ops<'static>)> {
    match device() {
        Some(d) => vec![
            (
                "GPU, full grid",
                Ops {
                    gpu: &d.gpu,
                    kernels: &d.kernels,
                },
            ),
            (
                "GPU, 2-D grid",
                Ops {
                    gpu: &d.gpu,
                    kernels: &d.small_grid,
                },
            ),
        ],
        None => vec![],
    }
}

/// One executor's versions of the ops that have their own implementation there (the others run
/// the reference functions themselves). A test is written once against this trait and run on
/// every runner of [`runners`].
pub trait OpRunner {
    fn name(&self) -> String;
    /// Tolerances for sums of products (outputs, input gradients) and for weight gradients.
    fn tolerances(&self) -> ((f32, f32), (f32, f32));
    /// Forward, input, weight and bias gradients in one go. `fused`: the ReLU after the layer
    /// applied by the forward pass, and the mask `input > 0` (of a ReLU before the layer) by the
    /// input gradient; `None` where this runner does not fuse.
    fn conv2d(
        &self,
        s: &Conv2dShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult>;
    fn dense(
        &self,
        s: &DenseShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult>;
    /// Pooling forward and input gradient, `relu_mask` as for the other ops (max pooling only);
    /// `None` where this runner does not fuse.
    fn pool2d(
        &self,
        max: bool,
        s: &Pool2dShape,
        x: &[f32],
        d_y: &[f32],
        relu_mask: bool,
    ) -> Option<(Vec<f32>, Vec<f32>)>;
    /// An elementwise activation (ReLU, tanh, sigmoid) over `batch` samples: output and input
    /// gradient.
    fn activation(
        &self,
        layer: Layer,
        batch: usize,
        x: &[f32],
        d_y: &[f32],
    ) -> (Vec<f32>, Vec<f32>);
    /// Batch normalization: a training step from the running statistics `running` (its output,
    /// gradients and the running statistics after it), then an evaluation pass of `x`.
    fn batch_norm(
        &self,
        s: &BatchNormShape,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        d_y: &[f32],
        running: (&[f32], &[f32]),
    ) -> NormResult;
}

/// The fast CPU executor's kernels.
pub struct FastRunner;

impl OpRunner for FastRunner {
    fn name(&self) -> String {
        "fast CPU".into()
    }
    fn tolerances(&self) -> ((f32, f32), (f32, f32)) {
        (FAST_CPU, FAST_CPU)
    }
    fn conv2d(
        &self,
        s: &Conv2dShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult> {
        let mut ws = fast::ConvWorkspace::new(s);
        let mut r = LayerResult {
            output: vec![0.0; s.output_len()],
            d_input: vec![0.0; s.input_len()],
            d_weight: vec![0.0; s.weight_len()],
            d_bias: vec![0.0; s.out_channels],
        };
        let act = if fused.relu {
            fast::Epilogue::Relu
        } else {
            fast::Epilogue::None
        };
        fast::conv2d_forward(s, x, w, b, act, &mut r.output, &mut ws);
        fast::conv2d_backward_weight(s, d_y, &mut r.d_weight, Some(&mut r.d_bias), &mut ws);
        let mask = fused.relu_mask.then_some(fast::Before {
            act: fast::Epilogue::Relu,
            out: x,
            dropout: None,
        });
        fast::conv2d_backward_input(s, d_y, w, mask, &mut r.d_input, &mut ws);
        Some(r)
    }
    fn dense(
        &self,
        s: &DenseShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult> {
        let act = if fused.relu {
            fast::Epilogue::Relu
        } else {
            fast::Epilogue::None
        };
        let mut r = LayerResult {
            output: vec![0.0; s.batch * s.out_features],
            d_input: vec![0.0; x.len()],
            d_weight: vec![0.0; w.len()],
            d_bias: vec![0.0; s.out_features],
        };
        let mut scratch = vec![0.0; fast::dense_scratch_len(s)];
        fast::dense_forward(s, x, w, b, act, &mut r.output, &mut scratch);
        let mask = fused.relu_mask.then_some(fast::Before {
            act: fast::Epilogue::Relu,
            out: x,
            dropout: None,
        });
        let mut weight = w.to_vec();
        let (d_x, d_w, d_b) = (
            Some(&mut r.d_input[..]),
            &mut r.d_weight,
            Some(&mut r.d_bias[..]),
        );
        fast::dense_backward(s, x, d_y, &mut weight, mask, d_x, d_w, d_b, None);
        Some(r)
    }
    fn pool2d(
        &self,
        max: bool,
        s: &Pool2dShape,
        x: &[f32],
        d_y: &[f32],
        relu_mask: bool,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        let (mut y, mut dx) = (vec![0.0; s.output_len()], vec![0.0; s.input_len()]);
        if max {
            let mut argmax = vec![0u32; s.output_len()];
            fast::max_pool2d_forward(s, x, &mut y, &mut argmax);
            fast::max_pool2d_backward(s, &argmax, d_y, relu_mask.then_some(x), &mut dx);
        } else {
            if relu_mask {
                return None;
            }
            fast::avg_pool2d_forward(s, x, &mut y);
            fast::avg_pool2d_backward(s, d_y, &mut dx);
        }
        Some((y, dx))
    }
    fn activation(
        &self,
        layer: Layer,
        _batch: usize,
        x: &[f32],
        d_y: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        use wgcnn::ops as r;
        let (mut y, mut dx) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        // The executor's own forward functions; its backward passes are the reference's.
        match layer {
            Layer::Relu => {
                r::relu_forward(x, &mut y);
                r::relu_backward(&y, d_y, &mut dx);
            }
            Layer::Tanh => {
                fast::tanh_forward(x, &mut y);
                r::tanh_backward(&y, d_y, &mut dx);
            }
            Layer::Sigmoid => {
                fast::sigmoid_forward(x, &mut y);
                r::sigmoid_backward(&y, d_y, &mut dx);
            }
            other => panic!("{other} is not an activation"),
        }
        (y, dx)
    }
    fn batch_norm(
        &self,
        s: &BatchNormShape,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        d_y: &[f32],
        running: (&[f32], &[f32]),
    ) -> NormResult {
        let (len, c) = (x.len(), s.channels);
        let mut r = LayerResult {
            output: vec![0.0; len],
            d_input: vec![0.0; len],
            d_weight: vec![0.0; c],
            d_bias: vec![0.0; c],
        };
        let mut stats = vec![0.0; 2 * c];
        fast::batchnorm_stats(s, x, &mut stats);
        let (mut mean, mut var) = (running.0.to_vec(), running.1.to_vec());
        fast::batchnorm_update_running(s, &stats, &mut mean, &mut var);
        fast::batchnorm_forward(s, x, w, b, &stats, &mut r.output);
        let (d_x, d_w, d_b) = (Some(&mut r.d_input[..]), &mut r.d_weight, &mut r.d_bias);
        fast::batchnorm_backward(s, x, d_y, w, &stats, d_x, d_w, d_b);
        let mut eval_output = vec![0.0; len];
        fast::batchnorm_forward(
            s,
            x,
            w,
            b,
            &[mean.clone(), var.clone()].concat(),
            &mut eval_output,
        );
        NormResult {
            layer: r,
            running_mean: mean,
            running_var: var,
            eval_output,
        }
    }
}

/// The GPU's kernels through [`Ops`], on one of the grids of [`gpu_ops`].
pub struct GpuRunner {
    pub grid: &'static str,
    pub ops: Ops<'static>,
}

impl GpuRunner {
    /// Only the subgroup kernels fuse; the portable ones run the plain op.
    fn fuses(&self, fused: Fused) -> bool {
        fused == Fused::default() || self.ops.kernels.fast()
    }
}

impl OpRunner for GpuRunner {
    fn name(&self) -> String {
        let path = if self.ops.kernels.fast() {
            "subgroup kernels"
        } else {
            "portable kernels"
        };
        format!("{}, {path}", self.grid)
    }
    fn tolerances(&self) -> ((f32, f32), (f32, f32)) {
        (LINEAR, REDUCTION)
    }
    fn conv2d(
        &self,
        s: &Conv2dShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult> {
        let result = || self.ops.conv2d(s, x, w, b, d_y, fused).unwrap();
        self.fuses(fused).then(result)
    }
    fn dense(
        &self,
        s: &DenseShape,
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        d_y: &[f32],
        fused: Fused,
    ) -> Option<LayerResult> {
        let result = || self.ops.dense(s, x, w, b, d_y, fused).unwrap();
        self.fuses(fused).then(result)
    }
    fn pool2d(
        &self,
        max: bool,
        s: &Pool2dShape,
        x: &[f32],
        d_y: &[f32],
        relu_mask: bool,
    ) -> Option<(Vec<f32>, Vec<f32>)> {
        if relu_mask && !(max && s.window == s.stride) {
            return None; // only disjoint max pooling applies a ReLU mask on the GPU
        }
        Some(self.ops.pool2d_masked(max, s, x, d_y, relu_mask).unwrap())
    }
    fn activation(
        &self,
        layer: Layer,
        batch: usize,
        x: &[f32],
        d_y: &[f32],
    ) -> (Vec<f32>, Vec<f32>) {
        self.ops.activation(&layer, batch, x, d_y).unwrap()
    }
    fn batch_norm(
        &self,
        s: &BatchNormShape,
        x: &[f32],
        w: &[f32],
        b: &[f32],
        d_y: &[f32],
        running: (&[f32], &[f32]),
    ) -> NormResult {
        self.ops.batch_norm(s, x, w, b, d_y, running).unwrap()
    }
}

/// The fused forms of a layer with parameters, where the runner has them: `run(fused)` must give
/// `relu(y)` with the ReLU applied by the forward pass, and `relu_backward(x, dx)` with the mask
/// `x > 0` (of a ReLU before the layer) applied by the input gradient; `(x, y, dx)` are the
/// layer's input, the reference's output and input gradient.
pub fn check_relu_fusions(
    tag: &str,
    tol: (f32, f32),
    (x, y, dx): (&[f32], &[f32], &[f32]),
    run: impl Fn(Fused) -> Option<LayerResult>,
) {
    let mut relu_y = vec![0.0; y.len()];
    wgcnn::ops::relu_forward(y, &mut relu_y);
    let mut masked = vec![0.0; dx.len()];
    wgcnn::ops::relu_backward(x, dx, &mut masked);
    let relu = Fused {
        relu: true,
        ..Fused::default()
    };
    if let Some(r) = run(relu) {
        close_tol(&format!("{tag} output + ReLU"), &r.output, &relu_y, tol);
    }
    let mask = Fused {
        relu_mask: true,
        ..Fused::default()
    };
    if let Some(r) = run(mask) {
        close_tol(&format!("ReLU + {tag} d_input"), &r.d_input, &masked, tol);
    }
}

/// Every executor's op runner: the fast CPU executor, then the GPU on both grids (where there is
/// a GPU), limited by `WGCNN_TEST_EXECUTORS`.
pub fn runners() -> Vec<Box<dyn OpRunner>> {
    let mut all: Vec<Box<dyn OpRunner>> = Vec::new();
    if executor_wanted("fast") {
        all.push(Box::new(FastRunner));
    }
    for (grid, ops) in gpu_ops() {
        all.push(Box::new(GpuRunner { grid, ops }));
    }
    all
}
