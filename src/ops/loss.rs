//! Losses on the logits, their gradients, and the accuracy count. WGSL twin: `shaders/loss.wgsl`.
//!
//! ---------------------------------------------------------------------------------------------.

use num_traits::Float;

use crate::spec::Loss;

use super::activation::sigmoid;
use super::cast;

// ---------------------------------------------------------------------------------------------

/// Softmax + cross-entropy, fused: `loss_n = logsumexp(z_n) - z_n[label_n]`, computed after
/// subtracting the row maximum so that large logits do not overflow. Returns the mean over the batch.
pub fn softmax_cross_entropy_forward<T: Float>(classes: usize, logits: &[T], labels: &[u8]) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        let row = &logits[n * classes..(n + 1) * classes];
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        let sum_exp = row.iter().fold(T::zero(), |s, &z| s + (z - max).exp());
        total = total + (sum_exp.ln() + max - row[label as usize]);
    }
    total / cast(labels.len() as f64)
}

/// `d_logits[n, k] = (softmax(z_n)[k] - [k == label_n]) / batch`.
pub fn softmax_cross_entropy_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let batch: T = cast(labels.len() as f64);
    for (n, &label) in labels.iter().enumerate() {
        let row = &logits[n * classes..(n + 1) * classes];
        let max = row.iter().fold(T::neg_infinity(), |m, &z| m.max(z));
        let sum_exp = row.iter().fold(T::zero(), |s, &z| s + (z - max).exp());
        for k in 0..classes {
            let target = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            d_logits[n * classes + k] = ((row[k] - max).exp() / sum_exp - target) / batch;
        }
    }
}

/// Sigmoid outputs against one-hot targets with binary cross-entropy, from the logits so that it
/// is stable: `max(z, 0) - z*y + ln(1 + e^-|z|)`. Returns the mean over all `batch * classes` outputs.
pub fn sigmoid_binary_cross_entropy_forward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let z = logits[n * classes + k];
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            total = total + (z.max(T::zero()) - z * y + (-z.abs()).exp().ln_1p());
        }
    }
    total / cast((labels.len() * classes) as f64)
}

/// `d_logits = (sigmoid(z) - y) / (batch * classes)`.
pub fn sigmoid_binary_cross_entropy_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let count: T = cast((labels.len() * classes) as f64);
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            d_logits[n * classes + k] = (sigmoid(logits[n * classes + k]) - y) / count;
        }
    }
}

/// Sigmoid outputs against one-hot targets with squared error: mean of `(sigmoid(z) - y)^2` over
/// all `batch * classes` outputs.
pub fn sigmoid_mean_squared_error_forward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
) -> T {
    let mut total = T::zero();
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            let diff = sigmoid(logits[n * classes + k]) - y;
            total = total + diff * diff;
        }
    }
    total / cast((labels.len() * classes) as f64)
}

/// `d_logits = 2 (p - y) p (1 - p) / (batch * classes)` with `p = sigmoid(z)`.
pub fn sigmoid_mean_squared_error_backward<T: Float>(
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    let count: T = cast((labels.len() * classes) as f64);
    let two: T = cast(2.0);
    for (n, &label) in labels.iter().enumerate() {
        for k in 0..classes {
            let y = if k == label as usize {
                T::one()
            } else {
                T::zero()
            };
            let p = sigmoid(logits[n * classes + k]);
            d_logits[n * classes + k] = two * (p - y) * p * (T::one() - p) / count;
        }
    }
}

/// How many rows have their first maximum logit at the label.
pub fn count_correct<T: Float>(classes: usize, logits: &[T], labels: &[u8]) -> usize {
    labels
        .iter()
        .enumerate()
        .filter(|&(n, &label)| {
            let row = &logits[n * classes..(n + 1) * classes];
            let mut best = 0;
            for k in 1..classes {
                if row[k] > row[best] {
                    best = k;
                }
            }
            best == label as usize
        })
        .count()
}

/// The batch-mean loss of the logits, for the network's loss kind.
pub fn loss_forward<T: Float>(loss: Loss, classes: usize, logits: &[T], labels: &[u8]) -> T {
    match loss {
        Loss::SoftmaxCrossEntropy => softmax_cross_entropy_forward(classes, logits, labels),
        Loss::SigmoidBinaryCrossEntropy => {
            sigmoid_binary_cross_entropy_forward(classes, logits, labels)
        }
        Loss::SigmoidMeanSquaredError => {
            sigmoid_mean_squared_error_forward(classes, logits, labels)
        }
    }
}

/// The gradient of the batch-mean loss with respect to the logits.
pub fn loss_backward<T: Float>(loss: Loss, classes: usize, logits: &[T], labels: &[u8]) -> Vec<T> {
    let mut d_logits = vec![T::zero(); logits.len()];
    loss_backward_into(loss, classes, logits, labels, &mut d_logits);
    d_logits
}

/// [`loss_backward`] into a buffer the caller owns.
pub fn loss_backward_into<T: Float>(
    loss: Loss,
    classes: usize,
    logits: &[T],
    labels: &[u8],
    d_logits: &mut [T],
) {
    match loss {
        Loss::SoftmaxCrossEntropy => {
            softmax_cross_entropy_backward(classes, logits, labels, d_logits)
        }
        Loss::SigmoidBinaryCrossEntropy => {
            sigmoid_binary_cross_entropy_backward(classes, logits, labels, d_logits)
        }
        Loss::SigmoidMeanSquaredError => {
            sigmoid_mean_squared_error_backward(classes, logits, labels, d_logits)
        }
    }
}
