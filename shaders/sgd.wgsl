// SGD with momentum and L2 weight decay, as torch.optim.SGD (no dampening, no Nesterov):
// g = grad + weight_decay * param (when weight_decay != 0);
// velocity = momentum * velocity + g; param -= lr * velocity.
// CPU twin: src/ops/sgd.rs sgd_update.
// Four values an invocation, as vec4: the buffers hold a multiple of 4 values (the executor's
// parameter arena does; zeros past the end stay zero). One dispatch updates every parameter of
// the network. Measured on llvmpipe, default network (profile medians of 3): 8 scalar dispatches,
// one per tensor, 45.5 ms in all; this one 26.6 ms.

struct SgdDims { len: u32, lr: f32, momentum: f32, weight_decay: f32 }  // len: values (a multiple of 4)

@group(0) @binding(0) var<storage, read> dims: SgdDims;
@group(0) @binding(1) var<storage, read_write> param: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> grad: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> velocity: array<vec4<f32>>;

@compute @workgroup_size(64)
fn sgd_update(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= dims.len / 4u) { return; }
    var g = grad[i];
    if (dims.weight_decay != 0.0) { g = g + dims.weight_decay * param[i]; }
    let v = dims.momentum * velocity[i] + g;
    velocity[i] = v;
    param[i] = param[i] - dims.lr * v;
}
