// Max and average pooling, NCHW, no padding (output size rounds down, as PyTorch's default).
// CPU twin: src/reference.rs max_pool2d_* / avg_pool2d_*.
// Backward passes gather: each input element visits the windows that contain it, so there are no
// scattered adds. Max pooling sends a window's gradient to its first maximum (row-major, strict >),
// recomputed here exactly as in the forward pass.

struct PoolDims {
    channels: u32, in_height: u32, in_width: u32, out_height: u32,
    out_width: u32, window: u32, stride: u32, _pad0: u32,
}
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<uniform> dims: PoolDims;
@group(0) @binding(1) var<uniform> run: Step;
@group(0) @binding(2) var<storage, read> input: array<f32>;         // [N, C, H, W]
@group(0) @binding(3) var<storage, read_write> output: array<f32>;  // [N, C, OH, OW]
@group(0) @binding(4) var<storage, read> d_output: array<f32>;      // [N, C, OH, OW]
@group(0) @binding(5) var<storage, read_write> d_input: array<f32>; // [N, C, H, W]

const WG: u32 = 64u;

// Flat input index of the first maximum of window (oy, ox) in plane `plane` (= n * C + c).
fn window_argmax(plane: u32, oy: u32, ox: u32) -> u32 {
    let base = plane * dims.in_height * dims.in_width;
    var best = base + oy * dims.stride * dims.in_width + ox * dims.stride;
    for (var wy = 0u; wy < dims.window; wy++) {
        for (var wx = 0u; wx < dims.window; wx++) {
            let i = base + (oy * dims.stride + wy) * dims.in_width + ox * dims.stride + wx;
            if (input[i] > input[best]) { best = i; }
        }
    }
    return best;
}

@compute @workgroup_size(64)
fn max_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let out_plane = dims.out_height * dims.out_width;
    if (index >= run.batch * dims.channels * out_plane) { return; }
    let ox = index % dims.out_width;
    let oy = (index / dims.out_width) % dims.out_height;
    output[index] = input[window_argmax(index / out_plane, oy, ox)];
}

@compute @workgroup_size(64)
fn avg_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let out_plane = dims.out_height * dims.out_width;
    if (index >= run.batch * dims.channels * out_plane) { return; }
    let ox = index % dims.out_width;
    let oy = (index / dims.out_width) % dims.out_height;
    let base = (index / out_plane) * dims.in_height * dims.in_width;
    var sum = 0.0;
    for (var wy = 0u; wy < dims.window; wy++) {
        for (var wx = 0u; wx < dims.window; wx++) {
            sum += input[base + (oy * dims.stride + wy) * dims.in_width + ox * dims.stride + wx];
        }
    }
    output[index] = sum / f32(dims.window * dims.window);
}

// The range of window rows (or columns) whose window covers input row (or column) `pos`:
// oy * stride <= pos < oy * stride + window, clipped to [0, out_size).
fn covering(pos: u32, out_size: u32) -> vec2<u32> {
    var first = 0u;
    if (pos + 1u > dims.window) { first = (pos + 1u - dims.window + dims.stride - 1u) / dims.stride; }
    let last = min(pos / dims.stride + 1u, out_size); // exclusive
    return vec2<u32>(first, last);
}

@compute @workgroup_size(64)
fn max_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let in_plane = dims.in_height * dims.in_width;
    if (index >= run.batch * dims.channels * in_plane) { return; }
    let plane = index / in_plane;
    let rows = covering((index % in_plane) / dims.in_width, dims.out_height);
    let cols = covering(index % dims.in_width, dims.out_width);
    var sum = 0.0;
    for (var oy = rows.x; oy < rows.y; oy++) {
        for (var ox = cols.x; ox < cols.y; ox++) {
            if (window_argmax(plane, oy, ox) == index) {
                sum += d_output[(plane * dims.out_height + oy) * dims.out_width + ox];
            }
        }
    }
    d_input[index] = sum;
}

@compute @workgroup_size(64)
fn avg_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let in_plane = dims.in_height * dims.in_width;
    if (index >= run.batch * dims.channels * in_plane) { return; }
    let plane = index / in_plane;
    let rows = covering((index % in_plane) / dims.in_width, dims.out_height);
    let cols = covering(index % dims.in_width, dims.out_width);
    let count = f32(dims.window * dims.window);
    var sum = 0.0;
    for (var oy = rows.x; oy < rows.y; oy++) {
        for (var ox = cols.x; ox < cols.y; ox++) {
            sum += d_output[(plane * dims.out_height + oy) * dims.out_width + ox] / count;
        }
    }
    d_input[index] = sum;
}
