//! `wgcnn predict`: classify a user's pictures with a checkpoint, naming the classes as the
//! checkpoint does (digits for MNIST, clothes for Fashion-MNIST).

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::MNIST_INPUT;
use crate::checkpoint;
use crate::predict;

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Pictures of one digit (or one piece of clothing, for a Fashion-MNIST model) each: PNG, JPEG
    /// or BMP, any size, dark on light or light on dark; framed as MNIST frames its digits.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Write the 28x28 image the network saw for each picture into this folder, as NAME.seen.png.
    #[arg(long, value_name = "DIR")]
    pub show: Option<PathBuf>,
}

pub fn run_predict(args: &PredictArgs) -> Result<()> {
    let input = MNIST_INPUT;
    let ck = checkpoint::load(&args.model, input, None)?;
    let norm = ck.info.normalization;
    if let Some(dir) = &args.show {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    }
    let mut failures = 0;
    // Pictures of the same name from different folders get their own NAME-2.seen.png, ...
    let mut shown = std::collections::HashSet::new();
    for path in &args.images {
        let result = (|| -> Result<()> {
            let frame =
                predict::mnist_frame(&predict::load_gray(path)?, &path.display().to_string())?;
            let x: Vec<f32> = frame.as_raw().iter().map(|&p| norm.apply(p)).collect();
            let acts = crate::exec::reference::network_forward(
                &ck.network,
                &ck.params,
                &ck.buffers,
                x,
                1,
                None,
            );
            let probs = predict::probabilities(ck.network.loss(), acts.last().unwrap());
            let top: Vec<String> = predict::ranked(&probs)
                .iter()
                .take(3)
                .map(|&(c, p)| format!("{} ({:.1}%)", ck.info.classes[c], 100.0 * p))
                .collect();
            println!("{}: {}", path.display(), top.join(", "));
            if let Some(dir) = &args.show {
                let stem = path
                    .file_stem()
                    .map_or("image".into(), |s| s.to_string_lossy().into_owned());
                let mut out = dir.join(format!("{stem}.seen.png"));
                let mut k = 1;
                while !shown.insert(out.clone()) {
                    k += 1;
                    out = dir.join(format!("{stem}-{k}.seen.png"));
                }
                let mut bytes = std::io::Cursor::new(Vec::new());
                frame
                    .write_to(&mut bytes, image::ImageFormat::Png)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
                checkpoint::write_atomically(&out, &bytes.into_inner())?;
                println!("  the network saw {}", out.display());
            }
            Ok(())
        })();
        if let Err(e) = result {
            eprintln!("error: {e:#}");
            failures += 1;
        }
    }
    anyhow::ensure!(
        failures == 0,
        "{failures} of {} images could not be classified",
        args.images.len()
    );
    Ok(())
}
