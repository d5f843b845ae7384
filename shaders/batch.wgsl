// Gather a batch from the data set that lives on the GPU as u8 pixels (packed four to a u32, since
// 60000 images as f32 would exceed the default 128 MiB storage binding) and normalise it:
// x = (pixel / 255 - mean) / std. CPU twin: src/ops/batch.rs gather_batch.

struct BatchDims { pixels: u32, sequential: u32, mean: f32, deviation: f32 } // sequential: 1 = images start.., 0 = order[start..]
struct Step { batch: u32, step: u32, start: u32, training: u32 }

@group(0) @binding(0) var<storage, read> dims: BatchDims;
@group(0) @binding(1) var<storage, read> run: Step;
@group(0) @binding(2) var<storage, read> images: array<u32>;          // [images * pixels] u8, packed
@group(0) @binding(3) var<storage, read> labels: array<u32>;          // [images]
@group(0) @binding(4) var<storage, read> order: array<u32>;           // this epoch's shuffle
@group(0) @binding(5) var<storage, read_write> x: array<f32>;         // [N, pixels]
@group(0) @binding(6) var<storage, read_write> batch_labels: array<u32>; // [N]

@compute @workgroup_size(64)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let i = gid.x + gid.y * groups.x * 64u;
    if (i >= run.batch * dims.pixels) { return; }
    let b = i / dims.pixels;
    let p = i % dims.pixels;
    var image = run.start + b;
    if (dims.sequential == 0u) { image = order[run.start + b]; }
    let byte = image * dims.pixels + p;
    let pixel = (images[byte / 4u] >> (8u * (byte % 4u))) & 0xffu;
    x[i] = (f32(pixel) / 255.0 - dims.mean) / dims.deviation;
    if (p == 0u) { batch_labels[b] = labels[image]; }
}
