// Gather a batch from the data set that lives on the GPU as u8 pixels (packed four to a u32, since
// 60000 images as f32 would exceed the default 128 MiB storage binding) and normalise it:
// x = (pixel / 255 - mean) / std. CPU twin: src/ops/batch.rs gather_batch.
// gather_batch_augmented moves, turns and scales each training image on the way (CPU twin:
// src/ops/augment.rs, which states the transform); its random numbers come from the hash of
// dropout_mask.wgsl, prepended to this file.

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

// Augmentation's ranges and stream, set per pipeline (see src/ops/augment.rs: Augment,
// augment_seed). SIDE: the images are SIDE x SIDE (PIXELS = SIDE * SIDE).
override SIDE: u32 = 28u;
override AUG_SHIFT: u32 = 0u;
override AUG_ROTATE: f32 = 0.0;     // degrees
override AUG_SCALE: f32 = 0.0;
override AUG_FLIP: bool = false;
override AUG_SEED: u32 = 0u;
const DEGREE: f32 = 0.017453292519943295;   // pi / 180

// dropout_uniform(AUG_SEED, run.step, index) of src/ops/dropout.rs.
fn augment_uniform(index: u32) -> f32 {
    let h = hash_u32(hash_u32(hash_u32(AUG_SEED) ^ run.step) ^ index);
    return f32(h >> 8u) * (1.0 / 16777216.0);
}

// Pixel (x, y) of `image` as a value in [0, 1]; 0 outside the image.
fn pixel_at(image: u32, x: i32, y: i32) -> f32 {
    if (x < 0 || y < 0 || x >= i32(SIDE) || y >= i32(SIDE)) { return 0.0; }
    let byte = image * PIXELS + u32(y) * SIDE + u32(x);
    return f32((images[byte / 4u] >> (8u * (byte % 4u))) & 0xffu) / 255.0;
}

// sin and cos within +-45 degrees, as src/ops/augment.rs's sin_cos_small (the builtins are only
// promised to 2^-11 absolute).
fn sin_cos_small(a: f32) -> vec2<f32> {
    let a2 = a * a;
    let s = a * (1.0 + a2 * (-1.0 / 6.0 + a2 * (1.0 / 120.0 + a2 * (-1.0 / 5040.0 + a2 / 362880.0))));
    let c = 1.0 + a2 * (-0.5 + a2 * (1.0 / 24.0 + a2 * (-1.0 / 720.0 + a2 * (1.0 / 40320.0 - a2 / 3628800.0))));
    return vec2<f32>(s, c);
}

// One invocation per output pixel; each draws its image's transform (the same five uniforms).
@compute @workgroup_size(64)
fn gather_batch_augmented(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let t = gid.x + gid.y * groups.x * 64u;
    if (t >= run.batch * PIXELS) { return; }
    let b = t / PIXELS;
    let p = t - b * PIXELS;
    var image = run.start + b;
    if (!SEQUENTIAL) { image = order[image]; }
    let span = f32(2u * AUG_SHIFT + 1u);
    let shift_x = floor(augment_uniform(8u * b) * span) - f32(AUG_SHIFT);
    let shift_y = floor(augment_uniform(8u * b + 1u) * span) - f32(AUG_SHIFT);
    let angle = (2.0 * augment_uniform(8u * b + 2u) - 1.0) * AUG_ROTATE * DEGREE;
    let scale = 1.0 + (2.0 * augment_uniform(8u * b + 3u) - 1.0) * AUG_SCALE;
    let flip = AUG_FLIP && augment_uniform(8u * b + 4u) < 0.5;
    let centre = (f32(SIDE) - 1.0) / 2.0;
    let px = f32(p % SIDE) - centre - shift_x;
    let py = f32(p / SIDE) - centre - shift_y;
    let sc = sin_cos_small(angle);
    let s = sc.x;
    let c = sc.y;
    var sx = (c * px + s * py) / scale + centre;
    let sy = (c * py - s * px) / scale + centre;
    if (flip) { sx = f32(SIDE) - 1.0 - sx; }
    let x0 = floor(sx);
    let y0 = floor(sy);
    let fx = sx - x0;
    let fy = sy - y0;
    let ix = i32(x0);
    let iy = i32(y0);
    let top = (1.0 - fx) * pixel_at(image, ix, iy) + fx * pixel_at(image, ix + 1, iy);
    let bottom = (1.0 - fx) * pixel_at(image, ix, iy + 1) + fx * pixel_at(image, ix + 1, iy + 1);
    x[t] = ((1.0 - fy) * top + fy * bottom - MEAN) / DEVIATION;
    if (p == 0u) { batch_labels[b] = labels[image]; }
}
