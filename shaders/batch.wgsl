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

// The data set's shape and normalisation, set per pipeline (binding 0 holds the same numbers for
// reference; no entry point reads it): run-time reads of them were most of this kernel's loads.
override PIXELS: u32 = 1u;
override SEQUENTIAL: bool = false;
override MEAN: f32 = 0.0;
override DEVIATION: f32 = 1.0;
override QUADS: u32 = (PIXELS + 3u) / 4u;   // invocations per image: 4 pixels each

fn normalise(pixel: u32) -> f32 {
    return (f32(pixel) / 255.0 - MEAN) / DEVIATION;
}

// One invocation per 4 pixels of an image: one word of `images` when aligned (always, when
// PIXELS is a multiple of 4, as for MNIST's 784).
@compute @workgroup_size(64)
fn gather_batch(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = gid.x + gid.y * groups.x * 64u;
    if (t >= run.batch * QUADS) { return; }
    let b = t / QUADS;
    let p0 = (t - b * QUADS) * 4u;
    var image = run.start + b;
    if (!SEQUENTIAL) { image = order[image]; }
    let byte0 = image * PIXELS + p0;
    let out = b * PIXELS + p0;
    if (byte0 % 4u == 0u && p0 + 4u <= PIXELS) {
        let word = images[byte0 / 4u];
        x[out] = normalise(word & 0xffu);
        x[out + 1u] = normalise((word >> 8u) & 0xffu);
        x[out + 2u] = normalise((word >> 16u) & 0xffu);
        x[out + 3u] = normalise(word >> 24u);
    } else {
        for (var k = 0u; k < 4u && p0 + k < PIXELS; k++) {
            let byte = byte0 + k;
            x[out + k] = normalise((images[byte / 4u] >> (8u * (byte % 4u))) & 0xffu);
        }
    }
    if (p0 == 0u) { batch_labels[b] = labels[image]; }
}
