// Adam and AdamW, as torch.optim.Adam / AdamW (single-tensor path, no AMSGrad). The step's
// scalars are computed on the host in f64 and rounded to f32, as PyTorch computes them in Python
// floats (src/ops/adam.rs AdamStep), and written once a step into `s`, shared by every parameter.
// CPU twin: src/ops/adam.rs adam_update.
// Four values an invocation, as vec4 (the buffers hold a multiple of 4 values; see sgd.wgsl);
// every operation is per component, so the result is that of the scalar kernel bit for bit.

struct AdamDims { len: u32,  /* values, a multiple of 4 */ _pad0: u32, _pad1: u32, _pad2: u32 }
struct AdamStep {
    decay: f32,                  // AdamW: 1 - lr * weight_decay (1 for Adam)
    l2: f32,                     // Adam: weight_decay (0 for AdamW)
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    eps: f32,
    step_size: f32,              // lr / (1 - beta1^t)
    bias_correction2_sqrt: f32,  // sqrt(1 - beta2^t)
}

@group(0) @binding(0) var<storage, read> dims: AdamDims;
@group(0) @binding(1) var<storage, read> s: AdamStep;
@group(0) @binding(2) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> exp_avg: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read_write> exp_avg_sq: array<vec4<f32>>;

@compute @workgroup_size(64)
fn adam_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= dims.len / 4u) { return; }
    var p = param[i];
    if (s.decay != 1.0) { p = p * s.decay; }
    var g = grad[i];
    if (s.l2 != 0.0) { g = g + s.l2 * p; }
    // torch.lerp(exp_avg, g, 1 - beta1)
    var m = exp_avg[i];
    if (s.one_minus_beta1 < 0.5) {
        m = m + s.one_minus_beta1 * (g - m);
    } else {
        m = g - (g - m) * (1.0 - s.one_minus_beta1);
    }
    let v = exp_avg_sq[i] * s.beta2 + s.one_minus_beta2 * g * g;
    exp_avg[i] = m;
    exp_avg_sq[i] = v;
    let denom = sqrt(v) / s.bias_correction2_sqrt + s.eps;
    param[i] = p + (-s.step_size) * (m / denom);
}
