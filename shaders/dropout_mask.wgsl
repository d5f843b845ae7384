// The dropout mask, shared by every shader that applies dropout (prepended to dropout.wgsl,
// conv2d.wgsl, dense.wgsl and pool.wgsl by src/exec/gpu/kernels.rs): a counter-based hash of
// (seed, step, element index), the same as src/ops/dropout.rs (hash_u32, dropout_uniform), so the
// masks are identical to the CPU's. The module that includes this declares `run` (run.step) and
// passes the layer's probability p and mask seed (network::dropout_seed), override constants.

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

fn dropout_keep(p: f32, seed: u32, index: u32) -> bool {
    let h = hash_u32(hash_u32(hash_u32(seed) ^ run.step) ^ index);
    return f32(h >> 8u) * (1.0 / 16777216.0) >= p;
}

// Element `index` of the batch tensor after dropout (forward) or its gradient (backward): scaled
// by 1 / (1 - p) when kept, 0 when dropped.
fn dropout_apply(p: f32, seed: u32, index: u32, v: f32) -> f32 {
    return select(0.0, v * (1.0 / (1.0 - p)), dropout_keep(p, seed, index));
}

fn dropout_apply4(p: f32, seed: u32, index: u32, v: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dropout_apply(p, seed, index, v.x), dropout_apply(p, seed, index + 1u, v.y),
                     dropout_apply(p, seed, index + 2u, v.z), dropout_apply(p, seed, index + 3u, v.w));
}
