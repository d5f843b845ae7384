// Max and average pooling, NCHW, no padding (output size rounds down, as PyTorch's default).
// CPU twin: src/ops/pool.rs max_pool2d_* / avg_pool2d_*.
// Backward passes gather: each input element visits the windows that contain it, so there are no
// scattered adds. Max pooling sends a window's gradient to its first maximum (row-major, strict >),
// recomputed here exactly as in the forward pass.

struct PoolDims {
    channels: u32, in_height: u32, in_width: u32, out_height: u32,
    out_width: u32, window: u32, stride: u32, _pad0: u32,
}
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: PoolDims;          // the shape, as the constants below
@group(0) @binding(1) var<storage, read> run: Step;
@group(0) @binding(2) var<storage, read> input: array<f32>;         // [N, C, H, W]
@group(0) @binding(3) var<storage, read_write> output: array<f32>;  // [N, C, OH, OW]
@group(0) @binding(4) var<storage, read> d_output: array<f32>;      // [N, C, OH, OW]
@group(0) @binding(5) var<storage, read_write> d_input: array<f32>; // [N, C, H, W]

const WG: u32 = 64u;

// The layer's shape, set per layer at pipeline creation, so that index arithmetic folds to
// constants (binding 0 holds the same numbers for reference; no entry point reads it).
override CHANNELS: u32 = 1u;
override IN_H: u32 = 1u;
override IN_W: u32 = 1u;
override OUT_H: u32 = 1u;
override OUT_W: u32 = 1u;
override WINDOW: u32 = 1u;
override STRIDE: u32 = 1u;
// Whether the layer before is a ReLU whose backward pass this kernel applies (the ReLU then runs
// no backward kernel): where the input, that ReLU's output, is not positive the gradient is 0.
override RELU_MASK: bool = false;
// Whether the dropout after this layer is applied here, to the output (in training; the mask is
// in dropout_mask.wgsl, prepended to this file).
override DROP_OUT: bool = false;
override DROP_P: f32 = 0.0;
override DROP_SEED: u32 = 0u;

fn store_output(index: u32, v: f32) {
    if (DROP_OUT && run.training != 0u) {
        output[index] = dropout_apply(DROP_P, DROP_SEED, index, v);
    } else {
        output[index] = v;
    }
}
// Window-sized tiles covering the input, edges included.
override TILES_H: u32 = (IN_H + WINDOW - 1u) / WINDOW;
override TILES_W: u32 = (IN_W + WINDOW - 1u) / WINDOW;

// The first maximum (row-major, strict >) of the window whose first element is input[corner]:
// its flat index and value. Each element is loaded once (loads are the cost on a software adapter).
struct Best { index: u32, value: f32 }
fn window_max(corner: u32) -> Best {
    var best = Best(corner, input[corner]);
    for (var wy = 0u; wy < WINDOW; wy++) {
        for (var wx = 0u; wx < WINDOW; wx++) {
            let i = corner + wy * IN_W + wx;
            let v = input[i];
            if (v > best.value) { best = Best(i, v); }
        }
    }
    return best;
}

// Flat input index of the first maximum of window (oy, ox) in plane `plane` (= n * C + c).
fn window_argmax(plane: u32, oy: u32, ox: u32) -> u32 {
    return window_max(plane * IN_H * IN_W + oy * STRIDE * IN_W + ox * STRIDE).index;
}

@compute @workgroup_size(64)
fn max_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let out_plane = OUT_H * OUT_W;
    if (index >= run.batch * CHANNELS * out_plane) { return; }
    let ox = index % OUT_W;
    let oy = (index / OUT_W) % OUT_H;
    store_output(index, window_max((index / out_plane) * IN_H * IN_W + oy * STRIDE * IN_W + ox * STRIDE).value);
}

@compute @workgroup_size(64)
fn avg_pool2d_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let out_plane = OUT_H * OUT_W;
    if (index >= run.batch * CHANNELS * out_plane) { return; }
    let ox = index % OUT_W;
    let oy = (index / OUT_W) % OUT_H;
    let base = (index / out_plane) * IN_H * IN_W;
    var sum = 0.0;
    for (var wy = 0u; wy < WINDOW; wy++) {
        for (var wx = 0u; wx < WINDOW; wx++) {
            sum += input[base + (oy * STRIDE + wy) * IN_W + ox * STRIDE + wx];
        }
    }
    store_output(index, sum / f32(WINDOW * WINDOW));
}

// The range of window rows (or columns) whose window covers input row (or column) `pos`:
// oy * stride <= pos < oy * stride + window, clipped to [0, out_size).
fn covering(pos: u32, out_size: u32) -> vec2<u32> {
    var first = 0u;
    if (pos + 1u > WINDOW) { first = (pos + 1u - WINDOW + STRIDE - 1u) / STRIDE; }
    let last = min(pos / STRIDE + 1u, out_size); // exclusive
    return vec2<u32>(first, last);
}

@compute @workgroup_size(64)
fn max_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let in_plane = IN_H * IN_W;
    if (index >= run.batch * CHANNELS * in_plane) { return; }
    let plane = index / in_plane;
    let rows = covering((index % in_plane) / IN_W, OUT_H);
    let cols = covering(index % IN_W, OUT_W);
    var sum = 0.0;
    for (var oy = rows.x; oy < rows.y; oy++) {
        for (var ox = cols.x; ox < cols.y; ox++) {
            if (window_argmax(plane, oy, ox) == index) {
                sum += d_output[(plane * OUT_H + oy) * OUT_W + ox];
            }
        }
    }
    d_input[index] = sum;
}

@compute @workgroup_size(64)
fn avg_pool2d_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let index = gid.x + gid.y * groups.x * WG;
    let in_plane = IN_H * IN_W;
    if (index >= run.batch * CHANNELS * in_plane) { return; }
    let plane = index / in_plane;
    let rows = covering((index % in_plane) / IN_W, OUT_H);
    let cols = covering(index % IN_W, OUT_W);
    let count = f32(WINDOW * WINDOW);
    var sum = 0.0;
    for (var oy = rows.x; oy < rows.y; oy++) {
        for (var ox = cols.x; ox < cols.y; ox++) {
            sum += d_output[(plane * OUT_H + oy) * OUT_W + ox] / count;
        }
    }
    d_input[index] = sum;
}

// Max pooling backward when windows do not overlap (stride == window, the usual 2x2 pooling): one
// invocation per window-sized tile of the input writes the whole tile, the window's gradient at its
// first maximum and 0 elsewhere (tiles past the last window, at the bottom and right edges, are
// all 0). Each input is written once: no scattered adds, no search over covering windows, and a
// quarter of the invocations of max_pool2d_backward for 2x2 windows.
@compute @workgroup_size(64)
fn max_pool2d_backward_disjoint(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let tile = gid.x + gid.y * groups.x * WG;
    if (tile >= run.batch * CHANNELS * TILES_H * TILES_W) { return; }
    let tx = tile % TILES_W;
    let ty = (tile / TILES_W) % TILES_H;
    let plane = tile / (TILES_W * TILES_H);
    let base = plane * IN_H * IN_W + ty * WINDOW * IN_W + tx * WINDOW;
    let window = ty < OUT_H && tx < OUT_W;
    var best = base;
    var gradient = 0.0;
    if (window) {
        let m = window_max(base);
        best = m.index;
        gradient = d_output[(plane * OUT_H + ty) * OUT_W + tx];
        if (RELU_MASK && !(m.value > 0.0)) { gradient = 0.0; }
    }
    for (var wy = 0u; wy < WINDOW; wy++) {
        if (ty * WINDOW + wy >= IN_H) { break; }
        for (var wx = 0u; wx < WINDOW; wx++) {
            if (tx * WINDOW + wx >= IN_W) { break; }
            let i = base + wy * IN_W + wx;
            d_input[i] = select(0.0, gradient, i == best && window);
        }
    }
}
