//! The command line: `train`, `eval`, `predict`, `bench` and `presets`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

pub mod bench;
pub mod eval;
pub mod predict;
pub mod train;

pub use bench::BenchArgs;
pub use eval::EvalArgs;
pub use predict::PredictArgs;
pub use train::TrainArgs;

use crate::data::{self, Dataset, Normalization, Split, IMAGE_SIDE};
use crate::exec::reference::CpuReference;

/// The shape of an MNIST image, every network's input.
pub const MNIST_INPUT: Shape = Shape {
    channels: 1,
    height: IMAGE_SIDE,
    width: IMAGE_SIDE,
};
use crate::exec::fast::FastCpu;
use crate::exec::gpu::{AdapterChoice, Gpu, GpuExecutor, Kernels};
use crate::exec::{Executor, Sgd};
use crate::network::{Network, Shape};
use crate::spec::{self, NetSpec, PRESETS};
use crate::train::TrainConfig;

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
    /// With --gpu: the adapter whose name contains NAME, case-insensitive [default: WGPU_ADAPTER_NAME, else the high-performance one]. WGPU_BACKEND=vulkan|metal|dx12 picks the API.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
    /// Run the plain-loop CPU reference (the specification; slow) instead of the fast CPU executor.
    #[arg(long, conflicts_with = "gpu")]
    pub cpu_reference: bool,
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

pub(crate) fn check_config(config: &TrainConfig) -> Result<()> {
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
pub(crate) fn preset_normalization(arg: Option<NormalizeArg>, standardize: bool) -> Normalization {
    match arg {
        Some(_) => normalization(arg),
        None if standardize => Normalization::STANDARD,
        None => Normalization::UNIT,
    }
}

pub(crate) fn normalization(arg: Option<NormalizeArg>) -> Normalization {
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

pub(crate) fn mnist_network(spec: &NetSpec) -> Result<Network> {
    Network::new(spec, MNIST_INPUT)
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
        Command::Train(args) => train::run_train(&args),
        Command::Eval(args) => eval::run_eval(&args),
        Command::Predict(args) => predict::run_predict(&args),
        Command::Bench(args) => bench::run_bench(&args),
    }
}

pub(crate) fn empty_dataset() -> Dataset {
    Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        source: "none".into(),
    }
}
