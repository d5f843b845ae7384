//! The command line: `train`, `bench` and `presets`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::bench::{self, BenchConfig};
use crate::cpu::CpuReference;
use crate::data::{self, Dataset, Normalization, Split, IMAGE_SIDE};
use crate::executor::{Executor, Sgd};
use crate::gpu::{AdapterChoice, Gpu, GpuExecutor, Kernels};
use crate::network::{Network, Shape};
use crate::spec::{self, NetSpec, PRESETS};
use crate::train::{self, TrainConfig};

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
    /// A preset name (see `presets`) or a network spec such as conv8k3-relu-maxpool2-dense10.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Images per SGD step [default: the preset's].
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate [default: the preset's].
    #[arg(long)]
    pub lr: Option<f32>,
    /// SGD momentum, 0 for plain SGD [default: the preset's].
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Seed of the weight initialisation, the shuffles and the dropout masks.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
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
    /// How pixels become inputs.
    #[arg(long, value_enum, default_value_t = NormalizeArg::Unit)]
    pub normalize: NormalizeArg,
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
}

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Passes over the training set [default: the preset's].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
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
    /// With --gpu: time every kernel of a training step on its own (slow; each includes a wait).
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Training defaults for a spec that is not a preset.
const CUSTOM_DEFAULTS: (usize, usize, f32, f32) = (3, 32, 0.05, 0.9);

/// The network and training settings a `--model` value and the options resolve to.
pub struct Resolved {
    pub name: String,
    pub spec: NetSpec,
    pub config: TrainConfig,
}

pub fn resolve_model(args: &ModelArgs, epochs: Option<usize>) -> Result<Resolved> {
    let looks_like_spec = args.model.contains('-')
        || args.model.starts_with("conv")
        || args.model.starts_with("dense");
    let (name, spec_text, defaults) = match spec::preset(&args.model) {
        Ok(p) => (
            p.name.to_string(),
            p.spec.to_string(),
            (p.epochs, p.batch_size, p.lr, p.momentum),
        ),
        Err(_) if looks_like_spec => ("custom".to_string(), args.model.clone(), CUSTOM_DEFAULTS),
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
        seed: args.seed,
    };
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
    Ok(Resolved { name, spec, config })
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

fn normalization(arg: NormalizeArg) -> Normalization {
    match arg {
        NormalizeArg::Unit => Normalization::UNIT,
        NormalizeArg::Standard => Normalization::STANDARD,
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
        Ok(Box::new(CpuReference::new(
            net, params, train_set, test_set, norm, seed,
        )))
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
                    "{:<13} spec {}  (epochs {}, batch size {}, lr {}, momentum {})",
                    "", p.spec, p.epochs, p.batch_size, p.lr, p.momentum
                );
            }
            Ok(())
        }
        Command::Train(args) => run_train(&args),
        Command::Bench(args) => run_bench(&args),
    }
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let resolved = resolve_model(&args.model, args.epochs)?;
    let net = mnist_network(&resolved.spec)?;
    let (train_set, test_set) = load_data(&args.data)?;
    let c = resolved.config;
    println!("model {} = {}", resolved.name, resolved.spec);
    print!("{}", net.summary());
    println!(
        "data: {} training images, {} test images from {}",
        train_set.len(),
        test_set.len(),
        args.data.data.display()
    );
    println!(
        "training: {} epochs, batch size {}, lr {}, momentum {}, seed {}",
        c.epochs, c.batch_size, c.sgd.lr, c.sgd.momentum, c.seed
    );
    let params = net.init_params(c.seed);
    let train_len = train_set.len();
    let norm = normalization(args.data.normalize);
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
    println!("device: {}", exec.device());
    let reports = train::train(exec.as_mut(), &c, train_len, |r| {
        println!("{}", r.line(c.epochs))
    })?;
    if let Some(last) = reports.last() {
        println!(
            "final test accuracy {:.2}% (loss {:.4}) after {} epochs",
            100.0 * last.test.accuracy(),
            last.test.mean_loss(),
            last.epoch
        );
    }
    Ok(())
}

fn run_bench(args: &BenchArgs) -> Result<()> {
    let resolved = resolve_model(&args.model, None)?;
    let net = mnist_network(&resolved.spec)?;
    let (train_set, test_set) = load_data(&args.data)?;
    let c = resolved.config;
    let train_len = train_set.len();
    let params = net.init_params(c.seed);
    let norm = normalization(args.data.normalize);
    if args.profile {
        anyhow::ensure!(args.device.gpu, "--profile times GPU kernels: add --gpu");
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
        let config = BenchConfig {
            batch_size: c.batch_size,
            steps: args.steps,
            warmup: 0,
            repeats: 1,
            sgd: c.sgd,
            seed: c.seed,
        };
        bench::run(&mut exec, &config, train_len)?;
        let profile = exec.profile().unwrap_or(&[]);
        let total: f64 = profile.iter().map(|p| p.2).sum();
        println!(
            "kernel times of a training step on {} (batch {}), mean of {} steps:",
            exec.device(),
            c.batch_size,
            args.steps
        );
        for (entry, count, seconds) in profile {
            println!(
                "  {:<26} {:8.3} ms  {:5.1}%",
                entry,
                1000.0 * seconds / *count as f64,
                100.0 * seconds / total
            );
        }
        println!(
            "  {:<26} {:8.3} ms",
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
            "backend": if args.device.gpu { "gpu" } else { "cpu-reference" },
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
