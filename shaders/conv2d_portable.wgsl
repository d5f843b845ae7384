// 2-D convolution, NCHW, weight [out, in, k, k] (PyTorch's layout), zero padding, optional bias.
// CPU twin: src/ops/conv2d.rs conv2d_forward / conv2d_backward_input / conv2d_backward_weight.
//
// The PORTABLE path: direct loops, one output per invocation, no subgroup operations. It runs
// where the adapter has no subgroups (or with WGCNN_NO_SUBGROUPS=1); conv2d.wgsl is the fast path.
//
// Entry points: conv2d_forward (one invocation per position and four output channels), conv2d_backward_input (one per
// input element, gathering the taps that read it: no scattered adds, no atomics),
// conv2d_backward_weight and conv2d_backward_bias (one workgroup per weight or bias, reducing over
// batch x output positions in workgroup memory).

struct ConvDims {
    in_channels: u32, in_height: u32, in_width: u32, out_channels: u32,
    out_height: u32, out_width: u32, kernel_size: u32, stride: u32,
    padding: u32, has_bias: u32, _pad0: u32, _pad1: u32,
}
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: ConvDims;
@group(0) @binding(1) var<storage, read> run: Step;                 // run.batch = N
@group(0) @binding(2) var<storage, read> input: array<f32>;          // [N, in, H, W]
@group(0) @binding(3) var<storage, read> weight: array<f32>;         // [out, in, k, k]
@group(0) @binding(4) var<storage, read> bias: array<f32>;           // [out]
@group(0) @binding(5) var<storage, read_write> output: array<f32>;   // [N, out, OH, OW]
@group(0) @binding(6) var<storage, read> d_output: array<f32>;       // [N, out, OH, OW]
@group(0) @binding(7) var<storage, read_write> d_input: array<f32>;  // [N, in, H, W]
@group(0) @binding(8) var<storage, read_write> d_weight: array<f32>; // [out, in, k, k]
@group(0) @binding(9) var<storage, read_write> d_bias: array<f32>;   // [out]

const WG: u32 = 64u;
var<workgroup> partial: array<f32, 64>;

// Each invocation computes OUT_PER_THREAD output channels at one position: every input tap it
// loads feeds that many multiply-adds. (The host dispatches batch * ceil(out / 4) * OH * OW.)
const OUT_PER_THREAD: u32 = 4u;

@compute @workgroup_size(64)
fn conv2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let out_plane = dims.out_height * dims.out_width;
    let channel_groups = (dims.out_channels + OUT_PER_THREAD - 1u) / OUT_PER_THREAD;
    if (index >= run.batch * channel_groups * out_plane) { return; }
    let ox = index % dims.out_width;
    let oy = (index / dims.out_width) % dims.out_height;
    let o0 = ((index / out_plane) % channel_groups) * OUT_PER_THREAD;
    let n = index / (out_plane * channel_groups);
    let k = dims.kernel_size;
    let count = min(OUT_PER_THREAD, dims.out_channels - o0);
    let w_step = dims.in_channels * k * k; // from one output channel's weights to the next
    var sum = vec4<f32>(0.0);
    if (dims.has_bias != 0u) {
        for (var j = 0u; j < count; j++) { sum[j] = bias[o0 + j]; }
    }
    for (var c = 0u; c < dims.in_channels; c++) {
        let in_base = (n * dims.in_channels + c) * dims.in_height;
        let w_base = (o0 * dims.in_channels + c) * k;
        for (var ky = 0u; ky < k; ky++) {
            let iy = i32(oy * dims.stride + ky) - i32(dims.padding);
            if (iy < 0 || iy >= i32(dims.in_height)) { continue; }
            for (var kx = 0u; kx < k; kx++) {
                let ix = i32(ox * dims.stride + kx) - i32(dims.padding);
                if (ix < 0 || ix >= i32(dims.in_width)) { continue; }
                let x = input[(in_base + u32(iy)) * dims.in_width + u32(ix)];
                let w = (w_base + ky) * k + kx;
                for (var j = 0u; j < count; j++) { sum[j] += x * weight[w + j * w_step]; }
            }
        }
    }
    let out_index = ((n * dims.out_channels + o0) * dims.out_height + oy) * dims.out_width + ox;
    for (var j = 0u; j < count; j++) { output[out_index + j * out_plane] = sum[j]; }
}

@compute @workgroup_size(64)
fn conv2d_backward_input(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let in_plane = dims.in_height * dims.in_width;
    if (index >= run.batch * dims.in_channels * in_plane) { return; }
    let ix = index % dims.in_width;
    let iy = (index / dims.in_width) % dims.in_height;
    let c = (index / in_plane) % dims.in_channels;
    let n = index / (in_plane * dims.in_channels);
    let k = dims.kernel_size;
    var sum = 0.0;
    // Output (oy, ox) reads this input through tap (ky, kx) when oy * stride + ky - padding == iy.
    for (var ky = 0u; ky < k; ky++) {
        let ty = i32(iy + dims.padding) - i32(ky);
        if (ty < 0 || u32(ty) % dims.stride != 0u) { continue; }
        let oy = u32(ty) / dims.stride;
        if (oy >= dims.out_height) { continue; }
        for (var kx = 0u; kx < k; kx++) {
            let tx = i32(ix + dims.padding) - i32(kx);
            if (tx < 0 || u32(tx) % dims.stride != 0u) { continue; }
            let ox = u32(tx) / dims.stride;
            if (ox >= dims.out_width) { continue; }
            // Step through the output channels: d_output by a plane, weight by in * k * k.
            var g_index = (n * dims.out_channels * dims.out_height + oy) * dims.out_width + ox;
            var w_index = (c * k + ky) * k + kx;
            let g_step = dims.out_height * dims.out_width;
            let w_step = dims.in_channels * k * k;
            for (var o = 0u; o < dims.out_channels; o++) {
                sum += d_output[g_index] * weight[w_index];
                g_index += g_step;
                w_index += w_step;
            }
        }
    }
    d_input[index] = sum;
}

// Tree reduction of `partial` within a workgroup; the result ends in partial[0].
fn reduce_partial(local: u32) {
    for (var width = WG / 2u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if (local < width) { partial[local] += partial[local + width]; }
    }
    workgroupBarrier();
}

@compute @workgroup_size(64)
fn conv2d_backward_weight(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) local: u32,
                          @builtin(num_workgroups) groups: vec3<u32>) {
    let w_index = wid.x + wid.y * groups.x;
    let k = dims.kernel_size;
    if (w_index >= dims.out_channels * dims.in_channels * k * k) { return; } // uniform per workgroup
    let kx = w_index % k;
    let ky = (w_index / k) % k;
    let c = (w_index / (k * k)) % dims.in_channels;
    let o = w_index / (k * k * dims.in_channels);
    // The threads share out the (sample, output row) pairs; along a row no division is needed.
    var sum = 0.0;
    for (var row = local; row < run.batch * dims.out_height; row += WG) {
        let n = row / dims.out_height;
        let oy = row % dims.out_height;
        let iy = i32(oy * dims.stride + ky) - i32(dims.padding);
        if (iy < 0 || iy >= i32(dims.in_height)) { continue; }
        let g_row = ((n * dims.out_channels + o) * dims.out_height + oy) * dims.out_width;
        let x_row = ((n * dims.in_channels + c) * dims.in_height + u32(iy)) * dims.in_width;
        for (var ox = 0u; ox < dims.out_width; ox++) {
            let ix = i32(ox * dims.stride + kx) - i32(dims.padding);
            if (ix < 0 || ix >= i32(dims.in_width)) { continue; }
            sum += d_output[g_row + ox] * input[x_row + u32(ix)];
        }
    }
    partial[local] = sum;
    reduce_partial(local);
    if (local == 0u) { d_weight[w_index] = partial[0]; }
}

@compute @workgroup_size(64)
fn conv2d_backward_bias(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) local: u32,
                        @builtin(num_workgroups) groups: vec3<u32>) {
    let o = wid.x + wid.y * groups.x;
    if (o >= dims.out_channels) { return; }
    var sum = 0.0;
    for (var row = local; row < run.batch * dims.out_height; row += WG) {
        let n = row / dims.out_height;
        let g_row = ((n * dims.out_channels + o) * dims.out_height + row % dims.out_height) * dims.out_width;
        for (var ox = 0u; ox < dims.out_width; ox++) {
            sum += d_output[g_row + ox];
        }
    }
    partial[local] = sum;
    reduce_partial(local);
    if (local == 0u) { d_bias[o] = partial[0]; }
}
