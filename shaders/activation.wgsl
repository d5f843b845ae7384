// Elementwise activations; each backward pass uses the forward *output*.
// CPU twin: src/ops/activation.rs relu_* / tanh_* / sigmoid_*.

struct ElementDims { per_sample: u32, _pad0: u32, _pad1: u32, _pad2: u32 }
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: ElementDims;
@group(0) @binding(1) var<storage, read> run: Step;
@group(0) @binding(2) var<storage, read> input: array<f32>;         // [N * per_sample]
@group(0) @binding(3) var<storage, read_write> output: array<f32>;  // [N * per_sample]
@group(0) @binding(4) var<storage, read> d_output: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_input: array<f32>;

const WG: u32 = 64u;

fn element(gid: vec3<u32>, groups: vec3<u32>) -> u32 {
    return gid.x + gid.y * groups.x * WG;
}

@compute @workgroup_size(64)
fn relu_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    output[i] = max(input[i], 0.0);
}

@compute @workgroup_size(64)
fn relu_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    d_input[i] = select(0.0, d_output[i], output[i] > 0.0);
}

// tanh as Cephes' tanhf computes it: an odd polynomial below |x| = 0.625, else
// 1 - 2 / (e^2|x| + 1) with the sign of x (within 1 ulp with an exact exp).
// Not the builtin: WGSL bounds tanh's error absolutely, and llvmpipe's tanh(3e-4) is off by
// 3.3e-5 relative (tests/ops/activation.rs); some drivers also compute it through exp(2x) and
// return NaN for large |x|, hence the cap at 9 (tanh(9) rounds to 1 in f32).
fn tanh_precise(x: f32) -> f32 {
    let a = abs(x);
    if (a < 0.625) {
        let z = x * x;
        return ((((-5.70498872745e-3 * z + 2.06390887954e-2) * z - 5.37397155531e-2) * z
            + 1.33314422036e-1) * z - 3.33332819422e-1) * z * x + x;
    }
    let e = exp(2.0 * min(a, 9.0));
    return sign(x) * (1.0 - 2.0 / (e + 1.0));
}

@compute @workgroup_size(64)
fn tanh_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    output[i] = tanh_precise(input[i]);
}

@compute @workgroup_size(64)
fn tanh_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    d_input[i] = d_output[i] * (1.0 - output[i] * output[i]);
}

// 1 / (1 + e^-x), written so that neither branch overflows.
fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

@compute @workgroup_size(64)
fn sigmoid_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    output[i] = sigmoid(input[i]);
}

@compute @workgroup_size(64)
fn sigmoid_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = element(gid, groups);
    if (i >= run.batch * dims.per_sample) { return; }
    d_input[i] = d_output[i] * output[i] * (1.0 - output[i]);
}
