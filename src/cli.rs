//! The command line: `train`, `eval`, `predict`, `bench` and `presets`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::bench::{self, BenchConfig};
use crate::checkpoint::{self, CheckpointInfo};
use crate::cpu::CpuReference;
use crate::data::{self, Dataset, Normalization, Split, IMAGE_SIDE};
use crate::executor::{Executor, Sgd};
use crate::fast::FastCpu;
use crate::gpu::{AdapterChoice, Gpu, GpuExecutor, Kernels};
use crate::network::{Network, Shape};
use crate::spec::{self, NetSpec, PRESETS};
use crate::train::{self, TrainConfig};
use crate::{plot, predict};

#[derive(Debug, Parser)]
#[command(
    name = "wgcnn",
    version,
    about = "Train convolutional networks on MNIST, on the CPU or on any GPU through WGSL compute shaders"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network on MNIST and print loss and accuracy after each epoch.
    Train(TrainArgs),
    /// Evaluate a saved model on the test set: loss, accuracy and the confusion matrix.
    Eval(EvalArgs),
    /// Classify pictures of digits (PNG, JPEG, BMP) with a saved model.
    Predict(PredictArgs),
    /// Measure training speed: images per second and time per epoch, medians of several runs.
    Bench(BenchArgs),
    /// List the named networks with their specs and training defaults.
    Presets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NormalizeArg {
    /// pixel / 255, in [0, 1]
    Unit,
    /// (pixel / 255 - 0.1307) / 0.3081, the MNIST mean and deviation
    Standard,
}

/// Which network, and how to train it.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// A preset name (see `presets`) or a network spec such as conv8k3-relu-maxpool2-dense10
    /// [default: default, or the network of --resume].
    #[arg(long)]
    pub model: Option<String>,
    /// Images per SGD step [default: the preset's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate [default: the preset's].
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum, 0 for plain SGD [default: the preset's].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Multiply the learning rate by this after every epoch, in (0, 1]; 1 keeps it constant
    /// [default: the preset's].
    #[arg(long)]
    pub lr_decay: Option<f32>,
    /// Seed of the weight initialisation, the shuffles and the dropout masks [default: 1, or that of --resume].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Where the data comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Folder holding the MNIST IDX files (gzip or not) or mnist_train.csv / mnist_test.csv.
    #[arg(long, default_value = "assets/mnist")]
    pub data: PathBuf,
    /// Train on the first N training images only [default: all 60000].
    #[arg(long, value_name = "N")]
    pub limit_train: Option<usize>,
    /// Evaluate on the first N test images only [default: all 10000].
    #[arg(long, value_name = "N")]
    pub limit_test: Option<usize>,
    /// How pixels become inputs [default: the preset's (standard for default, unit for the others), or that of the checkpoint].
    #[arg(long, value_enum)]
    pub normalize: Option<NormalizeArg>,
}

/// Which device runs it.
#[derive(Debug, Clone, clap::Args)]
pub struct DeviceArgs {
    /// Run on the GPU (WGSL compute shaders through wgpu) instead of the CPU reference.
    #[arg(long)]
    pub gpu: bool,
    /// With --gpu: the adapter whose name contains NAME, case-insensitive [default: WGPU_ADAPTER_NAME, else the high-performance one]. WGPU_BACKEND=vulkan|metal|dx12|gl picks the API.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// Run the plain-loop CPU reference (the specification; slow) instead of the fast CPU executor.
    #[arg(long, conflicts_with = "gpu")]
    pub cpu_reference: bool,
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Epochs to reach, counting those of --resume [default: the preset's; with --resume, one more].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Write the weights (PyTorch names and layouts), momentum, spec, seed and epoch as safetensors
    /// after every epoch; the write is atomic.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Continue training from a checkpoint written by --save (weights and momentum).
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Draw train and test loss and accuracy per epoch into this PNG (redrawn after every epoch).
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Append one JSON object per epoch to this file (epoch, losses, accuracies, seconds, images/s, device).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Print only the final summary.
    #[arg(long)]
    pub quiet: bool,
}

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

#[derive(Debug, clap::Args)]
pub struct PredictArgs {
    /// A checkpoint written by `train --save`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Pictures of single digits: PNG, JPEG or BMP, any size, dark on light or light on dark.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Write the 28x28 image the network saw for each picture into this folder, as NAME.seen.png.
    #[arg(long, value_name = "DIR")]
    pub show: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Timed training steps per repetition.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 5)]
    pub warmup: usize,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Time every op of a training step: each GPU kernel on its own with --gpu (slow; each
    /// includes a wait), or each layer of the fast CPU executor.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Training defaults for a spec that is not a preset.
const CUSTOM_DEFAULTS: (usize, usize, f32, f32, f32) = (3, 32, 0.05, 0.9, 1.0);

/// The network and training settings a `--model` value and the options resolve to.
pub struct Resolved {
    pub name: String,
    pub spec: NetSpec,
    pub config: TrainConfig,
    /// The preset's input normalisation (unit for a custom spec).
    pub standardize: bool,
}

pub fn resolve_model(args: &ModelArgs, epochs: Option<usize>) -> Result<Resolved> {
    let model = args.model.as_deref().unwrap_or("default");
    let looks_like_spec =
        model.contains('-') || model.starts_with("conv") || model.starts_with("dense");
    let (name, spec_text, defaults) = match spec::preset(model) {
        Ok(p) => (
            p.name.to_string(),
            p.spec.to_string(),
            (p.epochs, p.batch_size, p.lr, p.momentum, p.lr_decay),
        ),
        Err(_) if looks_like_spec => ("custom".to_string(), model.to_string(), CUSTOM_DEFAULTS),
        Err(e) => anyhow::bail!(e),
    };
    let spec = NetSpec::parse(&spec_text).map_err(anyhow::Error::msg)?;
    let config = TrainConfig {
        epochs: epochs.unwrap_or(defaults.0),
        batch_size: args.batch_size.unwrap_or(defaults.1),
        sgd: Sgd {
            lr: args.lr.unwrap_or(defaults.2),
            momentum: args.momentum.unwrap_or(defaults.3),
        },
        lr_decay: args.lr_decay.unwrap_or(defaults.4),
        seed: args.seed.unwrap_or(1),
    };
    check_config(&config)?;
    let standardize = spec::preset(model).is_ok_and(|p| p.standardize);
    Ok(Resolved {
        name,
        spec,
        config,
        standardize,
    })
}

fn check_config(config: &TrainConfig) -> Result<()> {
    anyhow::ensure!(config.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(
        config.sgd.lr.is_finite() && config.sgd.lr > 0.0,
        "--lr must be a positive number, not {}",
        config.sgd.lr
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&config.sgd.momentum),
        "--momentum must be in [0, 1), not {}",
        config.sgd.momentum
    );
    anyhow::ensure!(
        config.lr_decay > 0.0 && config.lr_decay <= 1.0,
        "--lr-decay must be in (0, 1], not {}",
        config.lr_decay
    );
    Ok(())
}

/// Load both splits from `--data`, applying the limits.
pub fn load_data(args: &DataArgs) -> Result<(Dataset, Dataset)> {
    let mut train = data::load_split(&args.data, Split::Train)?;
    let mut test = data::load_split(&args.data, Split::Test)?;
    for (set, limit, flag) in [
        (&mut train, args.limit_train, "--limit-train"),
        (&mut test, args.limit_test, "--limit-test"),
    ] {
        if let Some(n) = limit {
            anyhow::ensure!(n >= 1, "{flag} must be at least 1");
            if n > set.len() {
                eprintln!(
                    "note: {flag} {n} is more than the {} images in {}; using all of them",
                    set.len(),
                    set.source
                );
            }
            set.truncate(n);
        }
    }
    Ok((train, test))
}

/// `--normalize` if given, else the preset's choice.
fn preset_normalization(arg: Option<NormalizeArg>, standardize: bool) -> Normalization {
    match arg {
        Some(_) => normalization(arg),
        None if standardize => Normalization::STANDARD,
        None => Normalization::UNIT,
    }
}

fn normalization(arg: Option<NormalizeArg>) -> Normalization {
    match arg {
        None | Some(NormalizeArg::Unit) => Normalization::UNIT,
        Some(NormalizeArg::Standard) => Normalization::STANDARD,
    }
}

/// The executor `--gpu` / `--adapter` ask for, with the network's initial parameters.
#[allow(clippy::too_many_arguments)]
pub fn make_executor(
    device: &DeviceArgs,
    net: Network,
    params: Vec<Vec<f32>>,
    train_set: Dataset,
    test_set: Dataset,
    norm: Normalization,
    seed: u64,
    batch_size: usize,
) -> Result<Box<dyn Executor>> {
    if device.gpu {
        let gpu = Arc::new(Gpu::new(&AdapterChoice {
            name: device.adapter.clone(),
        })?);
        let kernels = Arc::new(Kernels::new(&gpu)?);
        Ok(Box::new(GpuExecutor::new(
            gpu, kernels, net, &params, &train_set, &test_set, norm, seed, batch_size,
        )?))
    } else {
        anyhow::ensure!(
            device.adapter.is_none(),
            "--adapter chooses a GPU: add --gpu"
        );
        if device.cpu_reference {
            Ok(Box::new(CpuReference::new(
                net, params, train_set, test_set, norm, seed,
            )))
        } else {
            Ok(Box::new(FastCpu::new(
                net, params, train_set, test_set, norm, seed, batch_size,
            )))
        }
    }
}

fn mnist_network(spec: &NetSpec) -> Result<Network> {
    let input = Shape {
        channels: 1,
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
    };
    Network::new(spec, input)
        .map_err(anyhow::Error::msg)
        .context("building the network")
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Presets => {
            for p in PRESETS {
                println!("{:<13} {}", p.name, p.description);
                println!(
                    "{:<13} spec {}  (epochs {}, batch size {}, lr {}, lr decay {}, momentum {}, normalize {})",
                    "",
                    p.spec,
                    p.epochs,
                    p.batch_size,
                    p.lr,
                    p.lr_decay,
                    p.momentum,
                    if p.standardize { "standard" } else { "unit" }
                );
            }
            Ok(())
        }
        Command::Train(args) => run_train(&args),
        Command::Eval(args) => run_eval(&args),
        Command::Predict(args) => run_predict(&args),
        Command::Bench(args) => run_bench(&args),
    }
}

/// What `train` reports to: the progress bar, the epoch lines, and the per-epoch outputs
/// (metrics file, checkpoint, plot).
struct Reporter<'a> {
    args: &'a TrainArgs,
    epochs: usize,
    device: String,
    model: String,
    bar: Option<indicatif::ProgressBar>,
    metrics: Option<std::fs::File>,
    history: Vec<train::EpochReport>,
    info: CheckpointInfo,
    steps_per_epoch: u64,
}

impl train::Observer for Reporter<'_> {
    fn progress(&mut self, p: &train::Progress) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(p.steps_per_epoch as u64);
            let style = indicatif::ProgressStyle::with_template(
                "epoch {prefix} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}",
            )
            .expect("the template is valid")
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_prefix(format!("{}/{}", p.epoch, self.epochs));
            bar
        });
        bar.set_position(p.step as u64);
        bar.set_message(format!(
            "loss {:.4} acc {:.2}%  {:.0} img/s",
            p.so_far.mean_loss(),
            100.0 * p.so_far.accuracy(),
            p.so_far.count as f64 / p.seconds.max(1e-9)
        ));
    }

    fn epoch_done(&mut self, r: &train::EpochReport, exec: &mut dyn Executor) -> Result<()> {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if !self.args.quiet {
            println!("{}", r.line(self.epochs));
        }
        if let Some(file) = &mut self.metrics {
            let line = serde_json::json!({
                "epoch": r.epoch,
                "train_loss": r.train.mean_loss(),
                "train_accuracy": r.train.accuracy(),
                "test_loss": r.test.mean_loss(),
                "test_accuracy": r.test.accuracy(),
                "seconds": r.seconds,
                "images_per_second": r.images_per_second,
                "device": self.device,
                "model": self.model,
            });
            writeln!(file, "{line}")
                .and_then(|_| file.flush())
                .with_context(|| {
                    format!(
                        "{}: cannot write",
                        self.args.metrics.as_ref().unwrap().display()
                    )
                })?;
        }
        if let Some(path) = &self.args.save {
            let params = exec.parameters()?;
            let momentum = exec.momentum()?;
            let info = CheckpointInfo {
                epoch: r.epoch,
                step: r.epoch as u64 * self.steps_per_epoch,
                ..self.info.clone()
            };
            checkpoint::save(path, exec.network(), &params, Some(&momentum), &info)?;
        }
        self.history.push(*r);
        if let Some(path) = &self.args.plot {
            plot::training_curves(
                path,
                &self.history,
                &format!("{} on {}", self.model, self.device),
            )?;
        }
        Ok(())
    }
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let input = Shape {
        channels: 1,
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
    };
    // With --resume, the checkpoint supplies the network and the defaults; options still override.
    let resumed = args
        .resume
        .as_ref()
        .map(|path| checkpoint::load(path, input, None))
        .transpose()?;
    let (name, spec, config, norm, first_epoch, params, momentum) = match resumed {
        Some(ck) => {
            if let Some(model) = &args.model.model {
                let wanted = match spec::preset(model) {
                    Ok(p) => NetSpec::parse(p.spec).map_err(anyhow::Error::msg)?,
                    Err(_) => NetSpec::parse(model).map_err(anyhow::Error::msg)?,
                };
                anyhow::ensure!(
                    wanted == ck.info.spec,
                    "--model {model} is {wanted}, but {} holds {}; leave --model out to continue that network",
                    args.resume.as_ref().unwrap().display(),
                    ck.info.spec
                );
            }
            let i = &ck.info;
            let config = TrainConfig {
                epochs: args.epochs.unwrap_or(i.epoch + 1),
                batch_size: args.model.batch_size.unwrap_or(i.batch_size),
                sgd: Sgd {
                    lr: args.model.lr.unwrap_or(i.lr),
                    momentum: args.model.momentum.unwrap_or(i.momentum),
                },
                lr_decay: args.model.lr_decay.unwrap_or(i.lr_decay),
                seed: args.model.seed.unwrap_or(i.seed),
            };
            check_config(&config)?;
            let norm = args
                .data
                .normalize
                .map_or(i.normalization, |n| normalization(Some(n)));
            let name = format!("resumed from {}", args.resume.as_ref().unwrap().display());
            (
                name,
                i.spec.clone(),
                config,
                norm,
                i.epoch + 1,
                ck.params,
                ck.momentum,
            )
        }
        None => {
            let r = resolve_model(&args.model, args.epochs)?;
            let net = mnist_network(&r.spec)?;
            let params = net.init_params(r.config.seed);
            (
                r.name,
                r.spec,
                r.config,
                preset_normalization(args.data.normalize, r.standardize),
                1,
                params,
                None,
            )
        }
    };
    let net = mnist_network(&spec)?;
    let (train_set, test_set) = load_data(&args.data)?;
    let c = config;
    let say = |line: String| {
        if !args.quiet {
            println!("{line}");
        }
    };
    say(format!("model {name} = {spec}"));
    if !args.quiet {
        print!("{}", net.summary());
    }
    say(format!(
        "data: {} training images, {} test images from {}",
        train_set.len(),
        test_set.len(),
        args.data.data.display()
    ));
    let decay = if c.lr_decay == 1.0 {
        String::new()
    } else {
        format!(" (x{} per epoch)", c.lr_decay)
    };
    say(format!(
        "training: epochs {first_epoch}..={}, batch size {}, lr {}{decay}, momentum {}, seed {}",
        c.epochs, c.batch_size, c.sgd.lr, c.sgd.momentum, c.seed
    ));
    if first_epoch > c.epochs {
        println!("nothing to do: the checkpoint has already trained {} epochs (ask for more with --epochs)", first_epoch - 1);
        return Ok(());
    }
    let train_len = train_set.len();
    let mut exec = make_executor(
        &args.device,
        net,
        params,
        train_set,
        test_set,
        norm,
        c.seed,
        c.batch_size,
    )?;
    if let Some(m) = &momentum {
        exec.set_momentum(m)?;
    }
    let device = exec.device();
    say(format!("device: {device}"));
    let metrics = match &args.metrics {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(first_epoch > 1)
                .write(true)
                .truncate(first_epoch == 1)
                .open(path)
                .with_context(|| format!("{}: cannot open the metrics file", path.display()))?,
        ),
        None => None,
    };
    let steps_per_epoch = train_len.div_ceil(c.batch_size);
    let mut reporter = Reporter {
        args,
        epochs: c.epochs,
        device: device.clone(),
        model: spec.to_string(),
        bar: None,
        metrics,
        history: Vec::new(),
        info: CheckpointInfo {
            spec: spec.clone(),
            seed: c.seed,
            epoch: 0,
            step: 0,
            batch_size: c.batch_size,
            lr: c.sgd.lr,
            momentum: c.sgd.momentum,
            lr_decay: c.lr_decay,
            normalization: norm,
        },
        steps_per_epoch: steps_per_epoch as u64,
    };
    // A live bar only on a terminal: each update reads the running loss back from the device.
    let progress_every = if !args.quiet && std::io::stderr().is_terminal() {
        (steps_per_epoch / 100).max(1)
    } else {
        0
    };
    let reports = train::train(
        exec.as_mut(),
        &c,
        train_len,
        first_epoch,
        progress_every,
        &mut reporter,
    )?;
    if let Some(last) = reports.last() {
        println!(
            "final test accuracy {:.2}% (loss {:.4}) after {} epochs on {}",
            100.0 * last.test.accuracy(),
            last.test.mean_loss(),
            last.epoch,
            device
        );
    }
    if let Some(path) = &args.save {
        say(format!("saved {}", path.display()));
    }
    if let Some(path) = &args.plot {
        say(format!("plotted {}", path.display()));
    }
    Ok(())
}

fn empty_dataset() -> Dataset {
    Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        source: "none".into(),
    }
}

fn run_eval(args: &EvalArgs) -> Result<()> {
    let input = Shape {
        channels: 1,
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
    };
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
    let loss = crate::cpu::loss_forward(net.loss(), classes, &logits, &test.labels);
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

fn run_predict(args: &PredictArgs) -> Result<()> {
    let input = Shape {
        channels: 1,
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
    };
    let ck = checkpoint::load(&args.model, input, None)?;
    let norm = ck.info.normalization;
    if let Some(dir) = &args.show {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create the folder", dir.display()))?;
    }
    let mut failures = 0;
    for path in &args.images {
        let result = (|| -> Result<()> {
            let frame =
                predict::mnist_frame(&predict::load_gray(path)?, &path.display().to_string())?;
            let x: Vec<f32> = frame.as_raw().iter().map(|&p| norm.apply(p)).collect();
            let acts = crate::cpu::network_forward(&ck.network, &ck.params, x, 1, None);
            let probs = predict::probabilities(ck.network.loss(), acts.last().unwrap());
            let top: Vec<String> = predict::ranked(&probs)
                .iter()
                .take(3)
                .map(|(c, p)| format!("{c} ({:.1}%)", 100.0 * p))
                .collect();
            println!("{}: {}", path.display(), top.join(", "));
            if let Some(dir) = &args.show {
                let stem = path
                    .file_stem()
                    .map_or("image".into(), |s| s.to_string_lossy().into_owned());
                let out = dir.join(format!("{stem}.seen.png"));
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

fn run_bench(args: &BenchArgs) -> Result<()> {
    let resolved = resolve_model(&args.model, None)?;
    let net = mnist_network(&resolved.spec)?;
    let (train_set, test_set) = load_data(&args.data)?;
    let c = resolved.config;
    let train_len = train_set.len();
    let params = net.init_params(c.seed);
    let norm = preset_normalization(args.data.normalize, resolved.standardize);
    if args.profile {
        anyhow::ensure!(
            !args.device.cpu_reference,
            "--profile times the GPU kernels (--gpu) or the fast CPU executor's ops, not the reference"
        );
        let config = BenchConfig {
            batch_size: c.batch_size,
            steps: args.steps,
            warmup: 0,
            repeats: 1,
            sgd: c.sgd,
            seed: c.seed,
        };
        let (device, profile) = if args.device.gpu {
            let gpu = Arc::new(Gpu::new(&AdapterChoice {
                name: args.device.adapter.clone(),
            })?);
            let kernels = Arc::new(Kernels::new(&gpu)?);
            let mut exec = GpuExecutor::new(
                gpu,
                kernels,
                net,
                &params,
                &train_set,
                &test_set,
                norm,
                c.seed,
                c.batch_size,
            )?;
            exec.enable_profiling();
            bench::run(&mut exec, &config, train_len)?;
            let profile = exec.profile().unwrap_or(&[]);
            let profile = profile.iter().map(|(e, n, s)| (e.to_string(), *n, *s));
            (exec.device(), profile.collect::<Vec<_>>())
        } else {
            anyhow::ensure!(
                args.device.adapter.is_none(),
                "--adapter chooses a GPU: add --gpu"
            );
            let mut exec =
                FastCpu::new(net, params, train_set, test_set, norm, c.seed, c.batch_size);
            // Warm the caches and the thread pool first, as the timed benchmark does.
            let warm = BenchConfig {
                steps: 1,
                warmup: args.warmup,
                ..config.clone()
            };
            bench::run(&mut exec, &warm, train_len)?;
            exec.enable_profiling();
            bench::run(&mut exec, &config, train_len)?;
            (exec.device(), exec.profile().unwrap_or_default())
        };
        let total: f64 = profile.iter().map(|p| p.2).sum();
        println!(
            "op times of a training step on {} (batch {}), mean of {} steps:",
            device, c.batch_size, args.steps
        );
        for (entry, count, seconds) in &profile {
            println!(
                "  {:<34} {:8.3} ms  {:5.1}%",
                entry,
                1000.0 * seconds / (*count).max(1) as f64,
                100.0 * seconds / total
            );
        }
        println!(
            "  {:<34} {:8.3} ms",
            "total",
            1000.0 * total / args.steps as f64
        );
        return Ok(());
    }
    let mut exec = make_executor(
        &args.device,
        net,
        params,
        train_set,
        test_set,
        norm,
        c.seed,
        c.batch_size,
    )?;
    let config = BenchConfig {
        batch_size: c.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        repeats: args.repeats,
        sgd: c.sgd,
        seed: c.seed,
    };
    if !args.json {
        println!(
            "bench {} ({}) on {}: batch {}, {} warm-up steps, {} x {} timed steps",
            resolved.name,
            resolved.spec,
            exec.device(),
            c.batch_size,
            args.warmup,
            args.repeats,
            args.steps
        );
    }
    let r = bench::run(exec.as_mut(), &config, train_len)?;
    if args.json {
        let value = serde_json::json!({
            "model": resolved.name,
            "spec": resolved.spec.to_string(),
            "device": r.device,
            "backend": if args.device.gpu { "gpu" } else if args.device.cpu_reference { "cpu-reference" } else { "cpu" },
            "batch_size": r.batch_size,
            "steps": r.steps,
            "repeats": r.images_per_second.len(),
            "images_per_second": r.images_per_second,
            "median_images_per_second": r.median_images_per_second,
            "median_step_ms": r.median_step_ms,
            "epoch_seconds": r.epoch_seconds,
            "train_images": r.train_len,
        });
        println!("{value}");
    } else {
        let runs: Vec<String> = r
            .images_per_second
            .iter()
            .map(|v| format!("{v:.0}"))
            .collect();
        println!("images/s per repetition: {}", runs.join(", "));
        println!(
            "median: {:.0} images/s, {:.2} ms/step, {:.1} s per epoch of {} images (training only)",
            r.median_images_per_second, r.median_step_ms, r.epoch_seconds, r.train_len
        );
    }
    Ok(())
}
