// Batch normalization over the channels of a tensor (PyTorch's BatchNorm1d/2d: affine, momentum
// 0.1, eps 1e-5). CPU twin: src/ops/batchnorm.rs, which states the formulas.
//
// Forward: batchnorm_stats (one workgroup a channel) writes the pass's mean and 1/sqrt(var + eps)
// into `stats`: the batch's while training (and moves the running statistics), the running ones at
// evaluation; then batchnorm_forward normalizes every element with them.
// Backward: batchnorm_backward_reduce (one workgroup a channel) sums d_output and d_output * xhat
// into d_bias and d_weight; batchnorm_backward_input then writes d_input.
// The reductions run in a fixed order (each thread a fixed stride, then a tree), so the results
// are the same bits from run to run.

struct NormDims { channels: u32, spatial: u32, _pad0: u32, _pad1: u32 }
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: NormDims;
@group(0) @binding(1) var<storage, read> run: Step;
@group(0) @binding(2) var<storage, read> input: array<f32>;            // [N, C, spatial]
@group(0) @binding(3) var<storage, read> weight: array<f32>;           // [C]
@group(0) @binding(4) var<storage, read> bias: array<f32>;             // [C]
@group(0) @binding(5) var<storage, read_write> output: array<f32>;     // [N, C, spatial]
@group(0) @binding(6) var<storage, read> d_output: array<f32>;
@group(0) @binding(7) var<storage, read_write> d_input: array<f32>;
@group(0) @binding(8) var<storage, read_write> d_weight: array<f32>;   // [C]
@group(0) @binding(9) var<storage, read_write> d_bias: array<f32>;     // [C]
@group(0) @binding(10) var<storage, read_write> stats: array<f32>;     // [mean[C], inv_std[C]]
@group(0) @binding(11) var<storage, read_write> running: array<f32>;   // [mean[C], var[C]]

const WG: u32 = 64u;
const RG: u32 = 256u;            // threads of a reduction workgroup
const EPS: f32 = 1e-5;
const MOMENTUM: f32 = 0.1;

var<workgroup> partial: array<f32, 256>;
var<workgroup> partial2: array<f32, 256>;

// The flat index of value j (0 <= j < N * spatial) of channel c.
fn at(c: u32, j: u32) -> u32 {
    let n = j / dims.spatial;
    return (n * dims.channels + c) * dims.spatial + (j - n * dims.spatial);
}

// Sum the workgroup's `partial` (and `partial2`) into element 0.
fn tree(t: u32) {
    for (var half = RG / 2u; half > 0u; half = half / 2u) {
        workgroupBarrier();
        if (t < half) {
            partial[t] = partial[t] + partial[t + half];
            partial2[t] = partial2[t] + partial2[t + half];
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(256)
fn batchnorm_stats(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                   @builtin(num_workgroups) groups: vec3<u32>) {
    let c = wid.x + wid.y * groups.x;      // a workgroup a channel, on a 1-D or 2-D grid
    let t = lid.x;
    let C = dims.channels;
    if (c >= C) { return; }                // uniform per workgroup
    if (run.training == 0u) {
        if (t == 0u) {
            stats[c] = running[c];
            stats[C + c] = 1.0 / sqrt(running[C + c] + EPS);
        }
        return;
    }
    let m = run.batch * dims.spatial;
    var sum = 0.0;
    for (var j = t; j < m; j += RG) {
        sum += input[at(c, j)];
    }
    partial[t] = sum;
    partial2[t] = 0.0;
    tree(t);
    let mean = partial[0] / f32(m);
    workgroupBarrier();
    var sq = 0.0;
    for (var j = t; j < m; j += RG) {
        let d = input[at(c, j)] - mean;
        sq += d * d;
    }
    partial[t] = sq;
    tree(t);
    if (t == 0u) {
        let var_ = partial[0] / f32(m);
        stats[c] = mean;
        stats[C + c] = 1.0 / sqrt(var_ + EPS);
        let unbiased = var_ * (f32(m) / f32(max(m, 2u) - 1u));
        running[c] = (1.0 - MOMENTUM) * running[c] + MOMENTUM * mean;
        running[C + c] = (1.0 - MOMENTUM) * running[C + c] + MOMENTUM * unbiased;
    }
}

@compute @workgroup_size(64)
fn batchnorm_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.channels * dims.spatial) { return; }
    let c = (i / dims.spatial) % dims.channels;
    output[i] = (input[i] - stats[c]) * stats[dims.channels + c] * weight[c] + bias[c];
}

@compute @workgroup_size(256)
fn batchnorm_backward_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_id) lid: vec3<u32>,
                             @builtin(num_workgroups) groups: vec3<u32>) {
    let c = wid.x + wid.y * groups.x;
    let t = lid.x;
    if (c >= dims.channels) { return; }
    let m = run.batch * dims.spatial;
    let mean = stats[c];
    let inv_std = stats[dims.channels + c];
    var sum_dy = 0.0;
    var sum_dy_xhat = 0.0;
    for (var j = t; j < m; j += RG) {
        let k = at(c, j);
        sum_dy += d_output[k];
        sum_dy_xhat += d_output[k] * (input[k] - mean) * inv_std;
    }
    partial[t] = sum_dy;
    partial2[t] = sum_dy_xhat;
    tree(t);
    if (t == 0u) {
        d_bias[c] = partial[0];
        d_weight[c] = partial2[0];
    }
}

@compute @workgroup_size(64)
fn batchnorm_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.channels * dims.spatial) { return; }
    let c = (i / dims.spatial) % dims.channels;
    let m = f32(run.batch * dims.spatial);
    let inv_std = stats[dims.channels + c];
    let xhat = (input[i] - stats[c]) * inv_std;
    d_input[i] = weight[c] * inv_std * (d_output[i] - d_bias[c] / m - xhat * d_weight[c] / m);
}
