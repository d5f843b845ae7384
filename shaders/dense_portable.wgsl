// Dense (fully connected) layer on the flattened input: weight [out, in] (PyTorch's layout).
// CPU twin: src/ops/dense.rs dense_forward / dense_backward_input / dense_backward_weight.
//
// The PORTABLE path: direct loops, one output per invocation, no subgroup operations. It runs
// where the adapter has no subgroups (or with WGCNN_NO_SUBGROUPS=1); dense.wgsl is the fast path.

struct DenseDims { in_features: u32, out_features: u32, has_bias: u32, _pad0: u32 }
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: DenseDims;
@group(0) @binding(1) var<storage, read> run: Step;                 // run.batch = N
@group(0) @binding(2) var<storage, read> input: array<f32>;          // [N, in]
@group(0) @binding(3) var<storage, read> weight: array<f32>;         // [out, in]
@group(0) @binding(4) var<storage, read> bias: array<f32>;           // [out]
@group(0) @binding(5) var<storage, read_write> output: array<f32>;   // [N, out]
@group(0) @binding(6) var<storage, read> d_output: array<f32>;       // [N, out]
@group(0) @binding(7) var<storage, read_write> d_input: array<f32>;  // [N, in]
@group(0) @binding(8) var<storage, read_write> d_weight: array<f32>; // [out, in]
@group(0) @binding(9) var<storage, read_write> d_bias: array<f32>;   // [out]

const WG: u32 = 64u;

@compute @workgroup_size(64)
fn dense_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    if (index >= run.batch * dims.out_features) { return; }
    let o = index % dims.out_features;
    let n = index / dims.out_features;
    var sum = 0.0;
    if (dims.has_bias != 0u) { sum = bias[o]; }
    for (var i = 0u; i < dims.in_features; i++) {
        sum += input[n * dims.in_features + i] * weight[o * dims.in_features + i];
    }
    output[index] = sum;
}

@compute @workgroup_size(64)
fn dense_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    if (index >= run.batch * dims.in_features) { return; }
    let i = index % dims.in_features;
    let n = index / dims.in_features;
    var sum = 0.0;
    for (var o = 0u; o < dims.out_features; o++) {
        sum += d_output[n * dims.out_features + o] * weight[o * dims.in_features + i];
    }
    d_input[index] = sum;
}

@compute @workgroup_size(64)
fn dense_backward_weight(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    if (index >= dims.out_features * dims.in_features) { return; }
    let i = index % dims.in_features;
    let o = index / dims.in_features;
    var sum = 0.0;
    for (var n = 0u; n < run.batch; n++) {
        sum += d_output[n * dims.out_features + o] * input[n * dims.in_features + i];
    }
    d_weight[index] = sum;
}

@compute @workgroup_size(64)
fn dense_backward_bias(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let o = gid.x + gid.y * groups.x * WG;
    if (o >= dims.out_features) { return; }
    var sum = 0.0;
    for (var n = 0u; n < run.batch; n++) {
        sum += d_output[n * dims.out_features + o];
    }
    d_bias[o] = sum;
}
