// SGD with momentum and L2 weight decay, as torch.optim.SGD (no dampening, no Nesterov):
// g = grad + weight_decay * param (when weight_decay != 0);
// velocity = momentum * velocity + g; param -= lr * velocity.
// CPU twin: src/ops/sgd.rs sgd_update.

struct SgdDims { len: u32, lr: f32, momentum: f32, weight_decay: f32 }

@group(0) @binding(0) var<storage, read> dims: SgdDims;
@group(0) @binding(1) var<storage, read_write> param: array<f32>;
@group(0) @binding(2) var<storage, read> grad: array<f32>;
@group(0) @binding(3) var<storage, read_write> velocity: array<f32>;

@compute @workgroup_size(64)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= dims.len) { return; }
    var g = grad[i];
    if (dims.weight_decay != 0.0) { g = g + dims.weight_decay * param[i]; }
    let v = dims.momentum * velocity[i] + g;
    velocity[i] = v;
    param[i] = param[i] - dims.lr * v;
}
