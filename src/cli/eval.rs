//! `wgcnn eval`: a checkpoint on the test set, with a confusion matrix, a plot and predictions.

use std::path::PathBuf;

use anyhow::Result;

use super::{empty_dataset, make_executor, normalization, DataArgs, DeviceArgs, MNIST_INPUT};
use crate::checkpoint;
use crate::data::{self, Split};
use crate::{plot, predict};

#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Draw the confusion matrix and the most confidently misclassified test images into this PNG.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Write one CSV row per test image: index, label, predicted class, its probability.
    #[arg(long, value_name = "FILE.csv")]
    pub predictions: Option<PathBuf>,
}

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let outputs: Vec<(&str, &std::path::Path)> =
        [("--plot", &args.plot), ("--predictions", &args.predictions)]
            .into_iter()
            .filter_map(|(flag, path)| path.as_deref().map(|p| (flag, p)))
            .collect();
    super::check_outputs(&outputs, &[("--model", args.model.as_path())])?;
    let input = MNIST_INPUT;
    let ck = checkpoint::load(&args.model, input, None)?;
    let mut test = data::load_split(&args.data.data, Split::Test)?;
    if let Some(n) = args.data.limit_test {
        anyhow::ensure!(n >= 1, "--limit-test must be at least 1");
        test.truncate(n);
    }
    let norm = args
        .data
        .normalize
        .map_or(ck.info.normalization, |n| normalization(Some(n)));
    let net = ck.network.clone();
    let classes = net.classes();
    let spec = ck.info.spec.clone();
    let mut exec = make_executor(
        &args.device,
        net.clone(),
        ck.params,
        empty_dataset(),
        test.clone(),
        norm,
        ck.info.seed,
        1,
    )?;
    println!(
        "model {} ({spec}, trained {} epochs) on {}",
        args.model.display(),
        ck.info.epoch,
        exec.device()
    );
    let logits = exec.test_logits()?;
    let loss = crate::ops::loss_forward(net.loss(), classes, &logits, &test.labels);
    let mut confusion = [[0u64; 10]; 10];
    let mut mistakes = Vec::new();
    let mut csv = String::from("index,label,predicted,probability\n");
    for (n, &label) in test.labels.iter().enumerate() {
        let probs = predict::probabilities(net.loss(), &logits[n * classes..(n + 1) * classes]);
        let (predicted, confidence) = predict::ranked(&probs)[0];
        csv.push_str(&format!("{n},{label},{predicted},{confidence}\n"));
        if label < 10 && predicted < 10 {
            confusion[label as usize][predicted] += 1;
        }
        if predicted != label as usize {
            mistakes.push(plot::Mistake {
                pixels: test.image(n),
                label: label as usize,
                predicted,
                confidence,
            });
        }
    }
    let correct: u64 = (0..10).map(|i| confusion[i][i]).sum();
    println!(
        "test loss {loss:.4}, accuracy {:.2}% ({correct} of {} images)",
        100.0 * correct as f64 / test.len() as f64,
        test.len()
    );
    println!("confusion matrix (rows: true digit, columns: predicted):");
    println!(
        "       {}   recall",
        (0..10).map(|c| format!("{c:>5}")).collect::<String>()
    );
    for (truth, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1);
        println!(
            "  {truth:>3}  {}  {:6.2}%",
            row.iter().map(|v| format!("{v:>5}")).collect::<String>(),
            100.0 * row[truth] as f64 / total as f64
        );
    }
    if let Some(path) = &args.predictions {
        checkpoint::write_atomically(path, csv.as_bytes())?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.plot {
        mistakes.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
        mistakes.truncate(20);
        let title = format!(
            "{spec}: {:.2}% on {} test images",
            100.0 * correct as f64 / test.len() as f64,
            test.len()
        );
        plot::evaluation(path, &confusion, &mistakes, &title)?;
        println!("plotted {}", path.display());
    }
    Ok(())
}
