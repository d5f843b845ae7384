//! Data augmentation for training: each image of a training batch moved by a random whole-pixel
//! shift, turned by a random angle and scaled by a random factor about its centre (and, if asked,
//! mirrored left to right), then normalised as [`super::gather_batch`] does. The random numbers
//! come from the counter-based hash dropout uses, keyed by (seed, step, position in the batch),
//! so every executor draws the same transforms and a run is reproducible. The test set and
//! evaluation never see it. WGSL twin: `shaders/batch.wgsl` (`gather_batch_augmented`).
//!
//! ---------------------------------------------------------------------------------------------
//! Output pixel (x, y) takes the value of the source image at the inverse transform of its
//! position, about the centre c = ((W - 1) / 2, (H - 1) / 2):
//! `p = (x, y) - c - shift`, `s = R(-angle) p / scale + c`, mirrored (`s.x = W - 1 - s.x`) if
//! flipped, read bilinearly from the pixels (as values in [0, 1]), 0 outside the image. With no
//! rotation and no scaling this is an exact whole-pixel shift.
//! ---------------------------------------------------------------------------------------------

use super::dropout_uniform;
use crate::data::{Dataset, Normalization, IMAGE_PIXELS, IMAGE_SIDE};

/// How training images are augmented.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    /// The largest shift in pixels along each axis: a whole number in [-shift, shift].
    pub shift: u32,
    /// The largest rotation in degrees: uniform in [-rotate, rotate].
    pub rotate: f32,
    /// The largest relative change of size: uniform in [1 - scale, 1 + scale].
    pub scale: f32,
    /// Mirror left to right, with probability 1/2.
    pub flip: bool,
}

impl Augment {
    /// `--augment`'s defaults: shifts of up to 2 pixels, 10 degrees, 10%, no mirroring.
    pub const DEFAULT: Augment = Augment {
        shift: 2,
        rotate: 10.0,
        scale: 0.1,
        flip: false,
    };

    /// The ranges accepted (and checked on the command line and in checkpoints), with why:
    /// beyond them a 28x28 digit leaves the frame or stops looking like itself.
    pub const MAX_SHIFT: u32 = 8;
    pub const MAX_ROTATE: f32 = 45.0;
    pub const MAX_SCALE: f32 = 0.5;

    /// Every parameter within its range, or a message naming the one that is not.
    pub fn check(&self) -> Result<(), String> {
        if self.shift > Self::MAX_SHIFT {
            return Err(format!(
                "shift {} px: expected 0 to {} pixels",
                self.shift,
                Self::MAX_SHIFT
            ));
        }
        if !(0.0..=Self::MAX_ROTATE).contains(&self.rotate) {
            return Err(format!(
                "rotate {}: expected 0 to {} degrees",
                self.rotate,
                Self::MAX_ROTATE
            ));
        }
        if !(0.0..Self::MAX_SCALE).contains(&self.scale) {
            return Err(format!(
                "scale {}: expected at least 0 and less than {}",
                self.scale,
                Self::MAX_SCALE
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Augment {
    /// The form checkpoints record and [`Augment::from_str`] reads, e.g.
    /// `shift=2,rotate=10,scale=0.1,flip=0`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "shift={},rotate={},scale={},flip={}",
            self.shift, self.rotate, self.scale, self.flip as u8
        )
    }
}

impl std::str::FromStr for Augment {
    type Err = String;
    fn from_str(text: &str) -> Result<Augment, String> {
        let mut found = [None; 4];
        for part in text.split(',') {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': expected key=value"))?;
            let slot = ["shift", "rotate", "scale", "flip"]
                .iter()
                .position(|k| *k == key)
                .ok_or_else(|| format!("'{key}': expected shift, rotate, scale or flip"))?;
            let number: f64 = value
                .parse()
                .map_err(|_| format!("{key}={value}: not a number"))?;
            found[slot] = Some(number);
        }
        let [Some(shift), Some(rotate), Some(scale), Some(flip)] = found else {
            return Err(format!(
                "'{text}': expected shift=N,rotate=DEG,scale=F,flip=0|1"
            ));
        };
        if shift.fract() != 0.0 || shift < 0.0 || shift > Augment::MAX_SHIFT as f64 {
            return Err(format!(
                "shift={shift}: expected a whole number of pixels from 0 to {}",
                Augment::MAX_SHIFT
            ));
        }
        if flip != 0.0 && flip != 1.0 {
            return Err(format!("flip={flip}: expected 0 or 1"));
        }
        let augment = Augment {
            shift: shift as u32,
            rotate: rotate as f32,
            scale: scale as f32,
            flip: flip == 1.0,
        };
        augment.check()?;
        Ok(augment)
    }
}

/// One image's transform, as drawn by [`augment_transform`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    pub shift_x: f32,
    pub shift_y: f32,
    /// The angle in radians.
    pub angle: f32,
    pub scale: f32,
    pub flip: bool,
}

/// The seed of a run's augmentation (its own stream, apart from every dropout layer's).
pub fn augment_seed(seed: u64) -> u32 {
    (seed as u32) ^ ((seed >> 32) as u32) ^ 0x5eed_a06e
}

/// The transform of the image at position `slot` of the batch of training step `step`: the
/// uniforms `dropout_uniform(seed, step, 8 * slot + k)` for k = 0..5 give the shift in x and y,
/// the angle, the scale and the mirroring, in that order.
pub fn augment_transform(augment: &Augment, seed: u32, step: u32, slot: u32) -> Transform {
    let u = |k: u32| dropout_uniform(seed, step, 8 * slot + k);
    let span = (2 * augment.shift + 1) as f32;
    let whole = |u: f32| (u * span).floor() - augment.shift as f32;
    // pi / 180 rounded once to f32, as the WGSL literal is
    let degrees_to_radians = (std::f64::consts::PI / 180.0) as f32;
    Transform {
        shift_x: whole(u(0)),
        shift_y: whole(u(1)),
        angle: (2.0 * u(2) - 1.0) * augment.rotate * degrees_to_radians,
        scale: 1.0 + (2.0 * u(3) - 1.0) * augment.scale,
        flip: augment.flip && u(4) < 0.5,
    }
}

/// sin and cos of an angle within +-45 degrees as polynomials (Taylor to degree 9 and 10 in Horner
/// form, error below 2e-9 there), written out the same way in WGSL: the builtins there are only
/// promised to 2^-11 absolute, which would move a pixel by up to 1% of its width.
pub fn sin_cos_small(a: f32) -> (f32, f32) {
    let a2 = a * a;
    let sin =
        a * (1.0 + a2 * (-1.0 / 6.0 + a2 * (1.0 / 120.0 + a2 * (-1.0 / 5040.0 + a2 / 362880.0))));
    let cos = 1.0
        + a2 * (-0.5
            + a2 * (1.0 / 24.0 + a2 * (-1.0 / 720.0 + a2 * (1.0 / 40320.0 - a2 / 3628800.0))));
    (sin, cos)
}

/// The transformed image, as values in [0, 1] (not yet normalised), from its `side` x `side`
/// pixels.
pub fn augment_image(pixels: &[u8], side: usize, t: &Transform, out: &mut [f32]) {
    let centre = (side as f32 - 1.0) / 2.0;
    let (sin, cos) = sin_cos_small(t.angle);
    let read = |x: i64, y: i64| -> f32 {
        if x < 0 || y < 0 || x >= side as i64 || y >= side as i64 {
            0.0
        } else {
            pixels[y as usize * side + x as usize] as f32 / 255.0
        }
    };
    for y in 0..side {
        for x in 0..side {
            let px = x as f32 - centre - t.shift_x;
            let py = y as f32 - centre - t.shift_y;
            let mut sx = (cos * px + sin * py) / t.scale + centre;
            let sy = (cos * py - sin * px) / t.scale + centre;
            if t.flip {
                sx = side as f32 - 1.0 - sx;
            }
            let (x0, y0) = (sx.floor(), sy.floor());
            let (fx, fy) = (sx - x0, sy - y0);
            let (x0, y0) = (x0 as i64, y0 as i64);
            let top = (1.0 - fx) * read(x0, y0) + fx * read(x0 + 1, y0);
            let bottom = (1.0 - fx) * read(x0, y0 + 1) + fx * read(x0 + 1, y0 + 1);
            out[y * side + x] = (1.0 - fy) * top + fy * bottom;
        }
    }
}

/// [`super::gather_batch`] with each image augmented: the transform of position `slot` of the
/// batch of step `step` (seed from [`augment_seed`]).
pub fn gather_batch_augmented(
    data: &Dataset,
    indices: &[u32],
    norm: Normalization,
    augment: &Augment,
    seed: u32,
    step: u32,
) -> (Vec<f32>, Vec<u8>) {
    let mut images = vec![0.0; indices.len() * IMAGE_PIXELS];
    let mut labels = Vec::with_capacity(indices.len());
    for (slot, &i) in indices.iter().enumerate() {
        let t = augment_transform(augment, seed, step, slot as u32);
        let out = &mut images[slot * IMAGE_PIXELS..(slot + 1) * IMAGE_PIXELS];
        augment_image(data.image(i as usize), IMAGE_SIDE, &t, out);
        for v in out.iter_mut() {
            *v = (*v - norm.mean) / norm.std;
        }
        labels.push(data.labels[i as usize]);
    }
    (images, labels)
}
