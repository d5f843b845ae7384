// The losses on the logits [N, classes], fused with their gradient, and the per-epoch metrics.
// CPU twin: src/ops/loss.rs softmax_cross_entropy_* / sigmoid_binary_cross_entropy_* /
// sigmoid_mean_squared_error_* / count_correct.
//
// loss_forward_backward: one invocation per sample writes its loss, whether its first maximum
// logit is the label, and its row of d_logits (already divided for the batch mean).
// accumulate_metrics: one workgroup reduces the batch (no atomics) and adds it to the running
// metrics, with Kahan summation so that an epoch of f32 additions stays accurate. It records the
// first step whose loss was not finite, so the host can name it.

struct LossDims { classes: u32, kind: u32, _pad0: u32, _pad1: u32 } // kind: 0 softmax CE, 1 sigmoid BCE, 2 sigmoid MSE
struct Step { batch: u32, step: u32, start: u32, training: u32 }
struct Metrics {
    loss_sum: f32,       // sum over samples of their loss
    loss_carry: f32,     // Kahan compensation of loss_sum
    correct: u32,
    count: u32,
    first_bad_step: u32, // 0xffffffff while every loss was finite
    bad_loss: f32,
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<storage, read> dims: LossDims;
@group(0) @binding(1) var<storage, read> run: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;            // [N, classes]
@group(0) @binding(3) var<storage, read> labels: array<u32>;            // [N]
@group(0) @binding(4) var<storage, read_write> d_logits: array<f32>;    // [N, classes]
@group(0) @binding(5) var<storage, read_write> sample_loss: array<f32>; // [N]
@group(0) @binding(6) var<storage, read_write> sample_correct: array<u32>; // [N]
@group(0) @binding(7) var<storage, read_write> metrics: Metrics;

fn sigmoid(x: f32) -> f32 {
    if (x >= 0.0) { return 1.0 / (1.0 + exp(-x)); }
    let e = exp(x);
    return e / (1.0 + e);
}

@compute @workgroup_size(64)
fn loss_forward_backward(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) groups: vec3<u32>) {
    let n = gid.x + gid.y * groups.x * 64u;
    if (n >= run.batch) { return; }
    let base = n * dims.classes;
    let label = labels[n];
    var best = 0u;
    var max_logit = logits[base];
    for (var k = 1u; k < dims.classes; k++) {
        if (logits[base + k] > max_logit) { max_logit = logits[base + k]; best = k; }
    }
    sample_correct[n] = select(0u, 1u, best == label);
    if (dims.kind == 0u) {
        // Softmax + cross-entropy, shifted by the row maximum: large logits do not overflow.
        var sum_exp = 0.0;
        for (var k = 0u; k < dims.classes; k++) { sum_exp += exp(logits[base + k] - max_logit); }
        sample_loss[n] = log(sum_exp) + max_logit - logits[base + label];
        for (var k = 0u; k < dims.classes; k++) {
            let one_hot = select(0.0, 1.0, k == label);
            d_logits[base + k] = (exp(logits[base + k] - max_logit) / sum_exp - one_hot) / f32(run.batch);
        }
    } else {
        let count = f32(run.batch * dims.classes);
        var total = 0.0;
        for (var k = 0u; k < dims.classes; k++) {
            let z = logits[base + k];
            let y = select(0.0, 1.0, k == label);
            let p = sigmoid(z);
            if (dims.kind == 1u) {
                // Binary cross-entropy from the logit: max(z, 0) - z y + ln(1 + e^-|z|).
                total += max(z, 0.0) - z * y + log(1.0 + exp(-abs(z)));
                d_logits[base + k] = (p - y) / count;
            } else {
                total += (p - y) * (p - y);
                d_logits[base + k] = 2.0 * (p - y) * p * (1.0 - p) / count;
            }
        }
        sample_loss[n] = total / f32(dims.classes);
    }
}

var<workgroup> loss_part: array<f32, 256>;
var<workgroup> correct_part: array<u32, 256>;

fn is_finite(x: f32) -> bool {
    // WGSL has no isnan/isinf; compilers may fold NaN comparisons away, the exponent bits cannot.
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u;
}

@compute @workgroup_size(256)
fn accumulate_metrics(@builtin(local_invocation_index) local: u32) {
    var loss = 0.0;
    var correct = 0u;
    for (var n = local; n < run.batch; n += 256u) {
        loss += sample_loss[n];
        correct += sample_correct[n];
    }
    loss_part[local] = loss;
    correct_part[local] = correct;
    for (var width = 128u; width > 0u; width /= 2u) {
        workgroupBarrier();
        if (local < width) {
            loss_part[local] += loss_part[local + width];
            correct_part[local] += correct_part[local + width];
        }
    }
    workgroupBarrier();
    if (local == 0u) {
        let batch_loss = loss_part[0];
        if (!is_finite(batch_loss) && metrics.first_bad_step == 0xffffffffu) {
            metrics.first_bad_step = run.step;
            metrics.bad_loss = batch_loss / f32(run.batch);
        }
        let y = batch_loss - metrics.loss_carry;
        let t = metrics.loss_sum + y;
        metrics.loss_carry = (t - metrics.loss_sum) - y;
        metrics.loss_sum = t;
        metrics.correct += correct_part[0];
        metrics.count += run.batch;
    }
}
