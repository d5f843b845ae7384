//! Data augmentation: the reference against hand-made cases (no change, exact shifts, a quarter
//! turn, mirroring, background entering the frame), its determinism, then the GPU's augmented
//! gather against it.

use wgcnn::data::{Normalization, IMAGE_PIXELS, IMAGE_SIDE};
use wgcnn::ops::*;

use crate::common::*;

const SIDE: usize = IMAGE_SIDE;
const NONE: Augment = Augment {
    shift: 0,
    rotate: 0.0,
    scale: 0.0,
    flip: false,
};

fn identity() -> Transform {
    Transform {
        shift_x: 0.0,
        shift_y: 0.0,
        angle: 0.0,
        scale: 1.0,
        flip: false,
    }
}

/// Pixel (x, y) of an image as a value in [0, 1], 0 outside.
fn at(image: &[u8], x: i64, y: i64) -> f32 {
    if x < 0 || y < 0 || x >= SIDE as i64 || y >= SIDE as i64 {
        0.0
    } else {
        image[y as usize * SIDE + x as usize] as f32 / 255.0
    }
}

#[test]
fn augmentation_moves_turns_and_mirrors_as_written() {
    let data = mnist_subset(40);
    let indices: Vec<u32> = (0..40).collect();
    for norm in [Normalization::UNIT, Normalization::STANDARD] {
        // Nothing to do: the plain gather, bit for bit.
        let (plain, plain_labels) = gather_batch(&data, &indices, norm);
        let (same, labels) = gather_batch_augmented(&data, &indices, norm, &NONE, 7, 3);
        assert_eq!(labels, plain_labels);
        assert!(plain
            .iter()
            .zip(&same)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
    // Shifts only: every image moved by whole pixels, exactly, the background entering.
    let shifts = Augment { shift: 3, ..NONE };
    let (moved, _) = gather_batch_augmented(&data, &indices, Normalization::UNIT, &shifts, 7, 3);
    let mut seen = std::collections::HashSet::new();
    for (slot, &i) in indices.iter().enumerate() {
        let t = augment_transform(&shifts, 7, 3, slot as u32);
        assert!(t.shift_x.abs() <= 3.0 && t.shift_y.abs() <= 3.0 && t.shift_x.fract() == 0.0);
        assert_eq!((t.angle, t.scale, t.flip), (0.0, 1.0, false));
        seen.insert((t.shift_x as i64, t.shift_y as i64));
        let image = data.image(i as usize);
        for y in 0..SIDE {
            for x in 0..SIDE {
                let expected = at(
                    image,
                    x as i64 - t.shift_x as i64,
                    y as i64 - t.shift_y as i64,
                );
                assert_eq!(
                    moved[slot * IMAGE_PIXELS + y * SIDE + x],
                    expected,
                    "image {i} ({x}, {y})"
                );
            }
        }
    }
    assert!(
        seen.len() >= 15,
        "40 images drew only {} of the 49 shifts",
        seen.len()
    );

    let image = data.image(0);
    let run = |t: &Transform| {
        let mut out = vec![0.0; IMAGE_PIXELS];
        augment_image(image, SIDE, t, &mut out);
        out
    };
    // A quarter turn about the centre (13.5, 13.5): output (x, y) reads the source at (y, 27 - x).
    // It is twice the flag's largest angle, where the sin/cos polynomials are off by 4e-6, which
    // moves a position by 5e-5 pixel: hence 1e-4.
    let turned = run(&Transform {
        angle: std::f32::consts::FRAC_PI_2,
        ..identity()
    });
    for y in 0..SIDE {
        for x in 0..SIDE {
            let expected = at(image, y as i64, 27 - x as i64);
            let got = turned[y * SIDE + x];
            assert!(
                (got - expected).abs() < 1e-4,
                "turned ({x}, {y}): {got} vs {expected}"
            );
        }
    }
    // Mirrored: (x, y) reads (27 - x, y), exactly.
    let mirrored = run(&Transform {
        flip: true,
        ..identity()
    });
    for y in 0..SIDE {
        for x in 0..SIDE {
            assert_eq!(mirrored[y * SIDE + x], at(image, 27 - x as i64, y as i64));
        }
    }
    // Twice the size about the centre: output (13, 13), half a pixel up and left of the centre,
    // reads the source a quarter pixel from it, at (13.25, 13.25): weights 3/4 and 1/4 a side.
    let doubled = run(&Transform {
        scale: 2.0,
        ..identity()
    });
    let (a, b) = (0.75, 0.25);
    let expected = a * a * at(image, 13, 13)
        + a * b * (at(image, 14, 13) + at(image, 13, 14))
        + b * b * at(image, 14, 14);
    assert!((doubled[13 * SIDE + 13] - expected).abs() < 1e-6);
    // Background enters where the image is shifted away: the largest shift empties 8 columns.
    let far = run(&Transform {
        shift_x: 8.0,
        ..identity()
    });
    assert!((0..SIDE).all(|y| (0..8).all(|x| far[y * SIDE + x] == 0.0)));
    assert_eq!(far[5 * SIDE + 20], at(image, 12, 5));
}

#[test]
fn augmentation_is_reproducible_and_differs_from_step_to_step() {
    let data = mnist_subset(16);
    let indices: Vec<u32> = (0..16).collect();
    let a = Augment {
        flip: true,
        ..Augment::DEFAULT
    };
    let draw = |seed, step| {
        gather_batch_augmented(&data, &indices, Normalization::STANDARD, &a, seed, step).0
    };
    assert_eq!(draw(5, 9), draw(5, 9));
    assert_ne!(draw(5, 9), draw(5, 10));
    assert_ne!(draw(5, 9), draw(6, 9));
    // The transforms cover their ranges.
    let ts: Vec<Transform> = (0..2000)
        .map(|slot| augment_transform(&a, 5, 9, slot))
        .collect();
    let max_angle = ts.iter().map(|t| t.angle.abs()).fold(0.0, f32::max);
    assert!(max_angle > 0.95 * 10f32.to_radians() && max_angle <= 10f32.to_radians() * 1.0001);
    assert!(ts.iter().all(|t| (0.9..=1.1).contains(&t.scale)));
    let flipped = ts.iter().filter(|t| t.flip).count();
    assert!((900..1100).contains(&flipped), "{flipped} of 2000 mirrored");
    for s in -2..=2 {
        assert!(
            ts.iter().any(|t| t.shift_x == s as f32) && ts.iter().any(|t| t.shift_y == s as f32)
        );
    }
}

#[test]
fn augmentation_settings_are_read_and_checked() {
    let a: Augment = "shift=2,rotate=10,scale=0.1,flip=0".parse().unwrap();
    assert_eq!(a, Augment::DEFAULT);
    assert_eq!(a.to_string().parse::<Augment>().unwrap(), a);
    for (bad, says) in [
        ("shift=2,rotate=10,scale=0.1", "expected shift=N"),
        ("shift=9,rotate=10,scale=0.1,flip=0", "from 0 to 8"),
        ("shift=1.5,rotate=10,scale=0.1,flip=0", "whole number"),
        ("shift=2,rotate=50,scale=0.1,flip=0", "0 to 45 degrees"),
        ("shift=2,rotate=10,scale=0.5,flip=0", "less than 0.5"),
        ("shift=2,rotate=10,scale=0.1,flip=2", "0 or 1"),
        ("shift=2,rotate=x,scale=0.1,flip=0", "not a number"),
        (
            "shift=2,turn=10,scale=0.1,flip=0",
            "expected shift, rotate, scale or flip",
        ),
    ] {
        let e = bad.parse::<Augment>().unwrap_err();
        assert!(e.contains(says), "{bad}: {e}");
    }
}

/// The GPU's augmented gather against the reference.
///
/// Tolerance: both compute the same formulas in f32 (sin and cos as the same polynomial); the
/// GPU's division is within 2.5 ULP and its compiler may fuse multiply-adds, so a source position
/// differs by ~1e-6 pixel, and a bilinear value (slope at most 1 per pixel, then divided by the
/// deviation 0.3081) by ~4e-6; 2e-5 absolute covers it. A wrong pixel or a transform off by 0.1%
/// moves values by 1e-2 or more.
#[test]
fn augmented_gather_matches_the_cpu_reference() {
    let data = mnist_subset(60);
    let order: Vec<u32> = (0..60).rev().collect();
    let augments = [
        Augment::DEFAULT,
        Augment {
            shift: 4,
            rotate: 45.0,
            scale: 0.3,
            flip: true,
        },
        Augment { shift: 2, ..NONE },
    ];
    for (grid, ops) in gpu_ops() {
        for a in &augments {
            for &(start, batch, step) in &[(0, 1, 0u32), (5, 3, 17), (20, 17, 123_456), (2, 58, 9)]
            {
                let seed = augment_seed(99);
                let (x_gpu, l_gpu) = ops
                    .gather_batch_augmented(
                        &data.images,
                        &data.labels,
                        &order,
                        start,
                        batch,
                        step,
                        Normalization::STANDARD,
                        (*a, seed),
                    )
                    .unwrap();
                let indices = &order[start..start + batch];
                let (x, l) =
                    gather_batch_augmented(&data, indices, Normalization::STANDARD, a, seed, step);
                let tag = format!("augmented gather {a} batch {batch} step {step} ({grid})");
                assert_eq!(
                    l_gpu,
                    l.iter().map(|&v| v as u32).collect::<Vec<_>>(),
                    "{tag}: labels"
                );
                close_tol(&tag, &x_gpu, &x, (2e-5, 0.0));
            }
        }
    }
}
