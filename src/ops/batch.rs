//! Gathering a batch: the images of a list of indices, normalised, as one NCHW tensor, and their
//! labels. WGSL twin: `shaders/batch.wgsl` (`gather_batch`).

use crate::data::{Dataset, Normalization, IMAGE_PIXELS};

/// The normalised images `indices` of `data`, as one NCHW batch, and their labels.
pub fn gather_batch(data: &Dataset, indices: &[u32], norm: Normalization) -> (Vec<f32>, Vec<u8>) {
    let mut images = Vec::with_capacity(indices.len() * IMAGE_PIXELS);
    let mut labels = Vec::with_capacity(indices.len());
    for &i in indices {
        images.extend(data.image(i as usize).iter().map(|&p| norm.apply(p)));
        labels.push(data.labels[i as usize]);
    }
    (images, labels)
}
