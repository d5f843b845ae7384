//! SGD with momentum, and batch gathering: the GPU against the reference (the fast CPU executor
//! runs the reference's update in pieces; the PyTorch comparison of whole SGD steps is in
//! tests/network.rs).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wgcnn::ops::*;

use crate::common::*;
use wgcnn::data::{Dataset, Normalization, IMAGE_PIXELS};

#[test]
fn sgd_and_batch_gathering_match_the_cpu_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    for (grid, ops) in gpu_ops() {
        for (n, weight_decay) in [(1, 0.0), (100, 0.0), (1000, 0.0), (257, 0.01)] {
            let (mut p, g, mut v) = (
                random_scaled(&mut rng, n, 1.0),
                random_scaled(&mut rng, n, 1.0),
                random_scaled(&mut rng, n, 1.0),
            );
            let (p_gpu, v_gpu) = ops.sgd((0.05, 0.9, weight_decay), &p, &g, &v).unwrap();
            sgd_update(0.05, 0.9, weight_decay, &mut p, &g, &mut v);
            close_tol(&format!("sgd param n {n} ({grid})"), &p_gpu, &p, LINEAR);
            close_tol(&format!("sgd velocity n {n} ({grid})"), &v_gpu, &v, LINEAR);
        }
        // Gathering: 7 images of 784 u8 pixels (not a multiple of 4 bytes overall), shuffled order.
        let count = 7;
        let images: Vec<u8> = (0..count * IMAGE_PIXELS).map(|_| rng.random()).collect();
        let labels: Vec<u8> = (0..count).map(|_| rng.random_range(0..10)).collect();
        let data = Dataset {
            images: images.clone(),
            labels: labels.clone(),
            source: "test".into(),
        };
        let order = [4u32, 6, 0, 2, 1, 5, 3];
        for norm in [Normalization::UNIT, Normalization::STANDARD] {
            for (sequential, start, batch) in [(false, 2, 4), (true, 3, 4), (false, 0, 7)] {
                let (x, l) = ops
                    .gather_batch(
                        IMAGE_PIXELS,
                        &images,
                        &labels,
                        &order,
                        start,
                        batch,
                        sequential,
                        norm,
                    )
                    .unwrap();
                let indices: Vec<u32> = if sequential {
                    (start as u32..(start + batch) as u32).collect()
                } else {
                    order[start..start + batch].to_vec()
                };
                let (x_cpu, l_cpu) = wgcnn::ops::gather_batch(&data, &indices, norm);
                // One division by 255 and one by the deviation: a few ULP.
                close_tol(
                    &format!("gather {norm:?} sequential {sequential} ({grid})"),
                    &x,
                    &x_cpu,
                    TRANSCENDENTAL,
                );
                assert_eq!(l, l_cpu.iter().map(|&v| v as u32).collect::<Vec<_>>());
            }
        }
        // Images of 13 pixels: every image but the first starts inside a 4-byte word, and each
        // ends with a partial group of 4 (the GPU reads a word for 4 aligned pixels, else bytes).
        let pixels = 13;
        let images: Vec<u8> = (0..count * pixels).map(|_| rng.random()).collect();
        let norm = Normalization::STANDARD;
        let (x, l) = ops
            .gather_batch(pixels, &images, &labels, &order, 1, 5, false, norm)
            .unwrap();
        let expected: Vec<f32> = order[1..6]
            .iter()
            .flat_map(|&i| &images[i as usize * pixels..(i as usize + 1) * pixels])
            .map(|&p| (p as f32 / 255.0 - norm.mean) / norm.std)
            .collect();
        close_tol(
            &format!("gather of 13-pixel images ({grid})"),
            &x,
            &expected,
            TRANSCENDENTAL,
        );
        let expected_labels: Vec<u32> = order[1..6]
            .iter()
            .map(|&i| labels[i as usize] as u32)
            .collect();
        assert_eq!(l, expected_labels);
    }
}
