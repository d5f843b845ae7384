//! Turn a user's picture of a digit into what MNIST looks like, then classify it.
//!
//! MNIST digits are light on a dark ground, size-normalised into a 20x20 box (aspect ratio kept,
//! anti-aliased), then placed in a 28x28 frame so that their centre of mass is at the centre.
//! [`mnist_frame`] does the same to any picture: grayscale, detect and fix the polarity (a light
//! border means dark ink on light paper), subtract the background, crop to the ink, scale the
//! longer side to 20 pixels, and centre by mass.

use std::path::Path;

use anyhow::{anyhow, bail, Result};
use image::{GrayImage, Luma};

use crate::data::IMAGE_SIDE;

/// The digit's box inside the frame, as in MNIST.
const BOX: u32 = 20;

/// Load `path` (PNG, JPEG or BMP) as 8-bit grayscale. The file is read whole first, so pipes and
/// `/dev/stdin` work too (the decoders need to seek). Transparency is honoured: the picture is laid
/// on white paper first, so dark ink on a transparent ground reads as ink.
pub fn load_gray(path: &Path) -> Result<GrayImage> {
    let bytes = std::fs::read(path).map_err(|e| anyhow!("{}: cannot open: {e}", path.display()))?;
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| anyhow!("{}: cannot read: {e}", path.display()))?;
    let image = reader.decode().map_err(|e| {
        anyhow!(
            "{}: not a readable PNG, JPEG or BMP image: {e}",
            path.display()
        )
    })?;
    if !image.color().has_alpha() {
        return Ok(image.to_luma8());
    }
    let rgba = image.to_luma_alpha8();
    Ok(GrayImage::from_fn(rgba.width(), rgba.height(), |x, y| {
        let [v, a] = rgba.get_pixel(x, y).0;
        let (v, a) = (v as u32, a as u32);
        // v over white: (v a + 255 (255 - a)) / 255, rounded
        Luma([((v * a + 255 * (255 - a) + 127) / 255) as u8])
    }))
}

/// The 28x28 frame, light digit on black, as MNIST presents it; `what` names the image in errors.
pub fn mnist_frame(gray: &GrayImage, what: &str) -> Result<GrayImage> {
    let (w, h) = gray.dimensions();
    if w == 0 || h == 0 {
        bail!("{what}: the image is empty");
    }
    // Polarity: the border is background. A light border means dark ink on light paper.
    let mut border = Vec::new();
    for x in 0..w {
        border.push(gray.get_pixel(x, 0)[0]);
        border.push(gray.get_pixel(x, h - 1)[0]);
    }
    for y in 0..h {
        border.push(gray.get_pixel(0, y)[0]);
        border.push(gray.get_pixel(w - 1, y)[0]);
    }
    border.sort_unstable();
    let background = border[border.len() / 2];
    let invert = background > 127;
    // Ink strength above the background, 0..=255.
    let ink = |p: u8| -> f32 {
        let v = if invert { 255 - p } else { p } as f32;
        let bg = if invert { 255 - background } else { background } as f32;
        (v - bg).max(0.0)
    };
    let peak = gray.pixels().map(|p| ink(p[0])).fold(0.0f32, f32::max);
    if peak < 16.0 {
        bail!("{what}: no digit found (the image is uniform; expected a digit darker or lighter than its background)");
    }
    let level = |p: u8| -> u8 { (255.0 * ink(p) / peak).round().clamp(0.0, 255.0) as u8 };
    // Crop to the ink: pixels at least a quarter of the strongest ink.
    let (mut x0, mut y0, mut x1, mut y1) = (w, h, 0, 0);
    for (x, y, p) in gray.enumerate_pixels() {
        if level(p[0]) >= 64 {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x);
            y1 = y1.max(y);
        }
    }
    let (cw, ch) = (x1 - x0 + 1, y1 - y0 + 1);
    let cropped = GrayImage::from_fn(cw, ch, |x, y| {
        Luma([level(gray.get_pixel(x0 + x, y0 + y)[0])])
    });
    // Longer side to 20 pixels, aspect kept.
    let scale = BOX as f32 / cw.max(ch) as f32;
    let (sw, sh) = (
        ((cw as f32 * scale).round() as u32).clamp(1, BOX),
        ((ch as f32 * scale).round() as u32).clamp(1, BOX),
    );
    let boxed = image::imageops::resize(&cropped, sw, sh, image::imageops::FilterType::Triangle);
    // Centre of mass to the centre of the frame.
    let (mut mass, mut mx, mut my) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y, p) in boxed.enumerate_pixels() {
        let m = p[0] as f64;
        mass += m;
        mx += m * (x as f64 + 0.5);
        my += m * (y as f64 + 0.5);
    }
    let (cx, cy) = if mass > 0.0 {
        (mx / mass, my / mass)
    } else {
        (sw as f64 / 2.0, sh as f64 / 2.0)
    };
    let side = IMAGE_SIDE as i64;
    let dx = (side as f64 / 2.0 - cx).round() as i64;
    let dy = (side as f64 / 2.0 - cy).round() as i64;
    let mut frame = GrayImage::new(IMAGE_SIDE as u32, IMAGE_SIDE as u32);
    for (x, y, p) in boxed.enumerate_pixels() {
        let (fx, fy) = (x as i64 + dx, y as i64 + dy);
        if (0..side).contains(&fx) && (0..side).contains(&fy) {
            frame.put_pixel(fx as u32, fy as u32, *p);
        }
    }
    Ok(frame)
}

/// The classes in order of decreasing score: (class, score).
pub fn ranked(scores: &[f32]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

/// Logits to probabilities: softmax for a softmax network, independent sigmoids for BCE/MSE ones.
pub fn probabilities(loss: crate::spec::Loss, logits: &[f32]) -> Vec<f32> {
    match loss {
        crate::spec::Loss::SoftmaxCrossEntropy => {
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|&z| (z - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.iter().map(|e| e / sum).collect()
        }
        _ => logits.iter().map(|&z| crate::ops::sigmoid(z)).collect(),
    }
}
