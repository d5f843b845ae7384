// Inverted dropout as a kernel of its own (where no neighbour applies it: see plan.rs's
// dropout_forward_fused / dropout_backward_fused). The mask (dropout_keep, dropout_apply) is in
// dropout_mask.wgsl, prepended to this file. At evaluation (run.training == 0) dropout is the
// identity.

struct DropoutDims { per_sample: u32, p: f32, seed: u32, _pad0: u32 }   // p, seed: as DROP_P, DROP_SEED
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: DropoutDims;
@group(0) @binding(1) var<storage, read> run: Step;                       // run.step seeds the mask
@group(0) @binding(2) var<storage, read> input: array<f32>;         // [N * per_sample]
@group(0) @binding(3) var<storage, read_write> output: array<f32>;
@group(0) @binding(4) var<storage, read> d_output: array<f32>;
@group(0) @binding(5) var<storage, read_write> d_input: array<f32>;

const WG: u32 = 64u;
override DROP_P: f32 = 0.0;     // the layer's probability and mask seed (dims.p, dims.seed)
override DROP_SEED: u32 = 0u;

@compute @workgroup_size(64)
fn dropout_forward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.per_sample) { return; }
    if (run.training == 0u) {
        output[i] = input[i];
    } else {
        output[i] = dropout_apply(DROP_P, DROP_SEED, i, input[i]);
    }
}

@compute @workgroup_size(64)
fn dropout_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * WG;
    if (i >= run.batch * dims.per_sample) { return; }
    d_input[i] = dropout_apply(DROP_P, DROP_SEED, i, d_output[i]);
}
