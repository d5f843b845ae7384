//! `wgcnn eval`: a checkpoint on the test set, with a confusion matrix, a plot and predictions.

use std::path::PathBuf;

use anyhow::Result;

use super::{empty_dataset, make_executor, normalization, DataArgs, DeviceArgs, MNIST_INPUT};
use crate::checkpoint;
use crate::data::{self, Split};
use crate::{plot, predict};

#[derive(Debug, clap::Args)]
#[command(mut_arg("data", |a| a.help(EVAL_DATA_HELP)))]
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
    /// Write one CSV row per test image: index, label, predicted class, its probability, and the
    /// names of the label and the predicted class.
    #[arg(long, value_name = "FILE.csv")]
    pub predictions: Option<PathBuf>,
}

/// `--data`'s help for `eval`, whose default follows the model.
const EVAL_DATA_HELP: &str = "Folder holding the test set: IDX files (gzip or not) or mnist_test.csv, and classes.txt naming the classes, one a line in label order (without it, the digits 0-9) [default: the shipped data set whose classes the model names (assets/fashion-mnist for a Fashion-MNIST model), else assets/mnist]";

pub fn run_eval(args: &EvalArgs) -> Result<()> {
    let outputs: Vec<(&str, &std::path::Path)> =
        [("--plot", &args.plot), ("--predictions", &args.predictions)]
            .into_iter()
            .filter_map(|(flag, path)| path.as_deref().map(|p| (flag, p)))
            .collect();
    super::check_outputs(&outputs, &[("--model", args.model.as_path())])?;
    let input = MNIST_INPUT;
    let ck = checkpoint::load(&args.model, input, None)?;
    // The model names its own classes. Without --data or --dataset, it is evaluated on the
    // shipped data set whose classes bear the same names.
    let names = ck.info.classes.clone();
    let folder = args
        .data
        .chosen_folder()
        .unwrap_or_else(|| super::shipped_folder_of(&names));
    let mut test = data::load_split(&folder, Split::Test)?;
    let data_names = data::class_names(&folder)?;
    if data_names != names {
        eprintln!(
            "warning: {} names its classes {}, but {} holds {}{}; scoring by label number",
            args.model.display(),
            names.join(", "),
            folder.display(),
            data_names.join(", "),
            if data::read_class_names(&folder)?.is_none() {
                format!(" (it has no {})", data::CLASSES_FILE)
            } else {
                String::new()
            }
        );
    }
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
    exec.set_buffers(&ck.buffers)?;
    println!(
        "model {} ({spec}, trained {} epochs) on {}",
        args.model.display(),
        ck.info.epoch,
        exec.device()
    );
    println!("data: {} test images from {}", test.len(), folder.display());
    let logits = exec.test_logits()?;
    let loss = crate::ops::loss_forward(net.loss(), classes, &logits, &test.labels);
    let mut confusion = [[0u64; 10]; 10];
    let mut mistakes = Vec::new();
    let mut csv = String::from("index,label,predicted,probability,label_name,predicted_name\n");
    for (n, &label) in test.labels.iter().enumerate() {
        let probs = predict::probabilities(net.loss(), &logits[n * classes..(n + 1) * classes]);
        let (predicted, confidence) = predict::ranked(&probs)[0];
        csv.push_str(&format!(
            "{n},{label},{predicted},{confidence},{},{}\n",
            csv_field(&names[label as usize]),
            csv_field(&names[predicted])
        ));
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
    print!("{}", confusion_table(&confusion, &names));
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
        plot::evaluation(path, &confusion, &mistakes, &names, &title)?;
        println!("plotted {}", path.display());
    }
    Ok(())
}

/// The confusion matrix as text, rows (true class) labelled with the class's number and, where
/// the classes are not the digits, its name; columns (predicted class) by number, as the rows.
pub fn confusion_table(confusion: &[[u64; 10]; 10], names: &[String]) -> String {
    let named = names != data::digit_classes();
    // The row labels' width: the number, and the longest name after it.
    let width = if named {
        1 + names.iter().map(|n| n.chars().count()).max().unwrap_or(0)
    } else {
        0
    };
    let mut out = String::new();
    out.push_str(if named {
        "confusion matrix (rows: true class, columns: predicted class, numbered as the rows):\n"
    } else {
        "confusion matrix (rows: true digit, columns: predicted):\n"
    });
    out.push_str(&format!(
        "  {:>3}{:width$}  {}   recall\n",
        "",
        "",
        (0..confusion.len())
            .map(|c| format!("{c:>5}"))
            .collect::<String>()
    ));
    for (truth, row) in confusion.iter().enumerate() {
        let total = row.iter().sum::<u64>().max(1);
        let name = if named {
            format!(" {:<w$}", names[truth], w = width - 1)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "  {truth:>3}{name}  {}  {:6.2}%\n",
            row.iter().map(|v| format!("{v:>5}")).collect::<String>(),
            100.0 * row[truth] as f64 / total as f64
        ));
    }
    out
}

/// A CSV field: quoted (quotes doubled) where it holds a comma, a quote or a space at either end.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"']) || text.trim() != text {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
