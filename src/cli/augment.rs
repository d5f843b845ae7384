//! `wgcnn augment`: a picture of the first training images next to their augmented versions, to
//! see what `--augment` and its options do before training with them.

use std::path::PathBuf;

use anyhow::Result;

use super::{AugmentArgs, DataArgs};
use crate::data::{self, Normalization, Split, IMAGE_SIDE};
use crate::ops::{augment_seed, gather_batch_augmented, Augment};

#[derive(Debug, Clone, clap::Args)]
pub struct AugmentPreviewArgs {
    /// Write the picture here (PNG): the originals in the top row, their augmented versions in
    /// the rows below, as training steps 0, 1, 2, ... would draw them at those batch positions.
    #[arg(long, value_name = "FILE.png")]
    pub out: PathBuf,
    /// How many training images, one a column (1 to 32).
    #[arg(long, default_value_t = 8)]
    pub count: usize,
    /// How many augmented versions of each, one a row (1 to 8).
    #[arg(long, default_value_t = 3)]
    pub rows: usize,
    /// The seed the draws come from, as `train --seed`.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
    /// The augmentation to show [default: --augment's defaults].
    #[command(flatten)]
    pub augment: AugmentArgs,
}

/// Pixels per image pixel, and between images.
const ZOOM: usize = 4;
const GAP: usize = 4;

pub fn run_augment(args: &AugmentPreviewArgs) -> Result<()> {
    anyhow::ensure!(
        (1..=32).contains(&args.count),
        "--count {}: expected 1 to 32 images",
        args.count
    );
    anyhow::ensure!(
        (1..=8).contains(&args.rows),
        "--rows {}: expected 1 to 8 rows",
        args.rows
    );
    let Some(augment) = args.augment.resolve(Some(Augment::DEFAULT))? else {
        anyhow::bail!("--no-augment: there is nothing to show");
    };
    super::check_outputs(&[("--out", args.out.as_path())], &[])?;
    let folder = args.data.folder();
    let train = data::load_split(&folder, Split::Train)?;
    anyhow::ensure!(
        train.len() >= args.count,
        "{}: {} training images, fewer than --count {}",
        folder.display(),
        train.len(),
        args.count
    );
    let indices: Vec<u32> = (0..args.count as u32).collect();
    let none = Augment {
        shift: 0,
        rotate: 0.0,
        scale: 0.0,
        flip: false,
    };
    let seed = augment_seed(args.seed);
    let mut rows =
        vec![gather_batch_augmented(&train, &indices, Normalization::UNIT, &none, seed, 0).0];
    for step in 0..args.rows as u32 {
        rows.push(
            gather_batch_augmented(&train, &indices, Normalization::UNIT, &augment, seed, step).0,
        );
    }
    // White ink on black, as the data set stores it; a wider gap under the originals.
    let cell = IMAGE_SIDE * ZOOM + GAP;
    let width = args.count * cell + GAP;
    let height = rows.len() * cell + 2 * GAP;
    let mut rgb = vec![96u8; width * height * 3];
    for (r, images) in rows.iter().enumerate() {
        let top = GAP + r * cell + if r > 0 { 2 * GAP } else { 0 };
        for c in 0..args.count {
            let left = GAP + c * cell;
            let image = &images[c * IMAGE_SIDE * IMAGE_SIDE..(c + 1) * IMAGE_SIDE * IMAGE_SIDE];
            for y in 0..IMAGE_SIDE * ZOOM {
                for x in 0..IMAGE_SIDE * ZOOM {
                    let v = image[(y / ZOOM) * IMAGE_SIDE + x / ZOOM];
                    let level = (v.clamp(0.0, 1.0) * 255.0).round() as u8;
                    let at = ((top + y) * width + left + x) * 3;
                    rgb[at..at + 3].fill(level);
                }
            }
        }
    }
    crate::plot::save_png(&args.out, rgb, width as u32, height as u32)?;
    println!(
        "wrote {}: {} training images of {} (top row) and {} augmented versions ({})",
        args.out.display(),
        args.count,
        folder.display(),
        args.rows,
        super::describe_augment(Some(&augment))
    );
    Ok(())
}
