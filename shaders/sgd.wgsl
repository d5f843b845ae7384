// SGD with momentum, as torch.optim.SGD (no dampening, no Nesterov):
// velocity = momentum * velocity + grad; param -= lr * velocity.
// CPU twin: src/ops/sgd.rs sgd_update.

struct SgdDims { len: u32, lr: f32, momentum: f32, _pad0: u32 }

@group(0) @binding(0) var<storage, read> dims: SgdDims;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;

@compute @workgroup_size(64)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= dims.len) { return; }
    let v = dims.momentum * velocity[i] + grad[i];
    velocity[i] = v;
    param[i] = param[i] - dims.lr * v;
}
