// Inverted dropout with a mask drawn from a counter-based hash of (seed, step, element index):
// the same hash as src/ops/dropout.rs (hash_u32, dropout_uniform), so masks are identical to the CPU's.
// At evaluation (run.training == 0) dropout is the identity.

struct DropoutDims { per_sample: u32, p: f32, seed: u32, _pad0: u32 }
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: DropoutDims;
@group(0) @binding(1) var<storage, read> run: Step;                       // run.step seeds the mask
@group(0) @binding(2) var<storage, read> input: array<f32>;         // [N * per_sample]
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<storage, read> d_output: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_input: array<f32>;

const WG: u32 = 64u;

// Chris Wellons' lowbias32.
fn hash_u32(value: u32) -> u32 {
    var x = value;
    x ^= x >> 16u;
    x *= 0x7feb352du;
    x ^= x >> 15u;
    x *= 0x846ca68bu;
    x ^= x >> 16u;
    return x;
}

fn keep(index: u32) -> bool {
    let h = hash_u32(hash_u32(hash_u32(dims.seed) ^ run.step) ^ index);
    return f32(h >> 8u) * (1.0 / 16777216.0) >= dims.p;
}

@compute @workgroup_size(64)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.per_sample) { return; }
    if (run.training == 0u) {
        output[i] = input[i];
    } else {
        output[i] = select(0.0, input[i] * (1.0 / (1.0 - dims.p)), keep(i));
    }
}

@compute @workgroup_size(64)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.per_sample) { return; }
    d_input[i] = select(0.0, d_output[i] * (1.0 / (1.0 - dims.p)), keep(i));
}
