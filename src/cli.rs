//! The command line: `train` and `presets`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use crate::cpu::CpuReference;
use crate::data::{self, Normalization, Split, IMAGE_SIDE};
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

#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// A preset name (see `presets`) or a network spec such as conv8k3-relu-maxpool2-dense10.
    #[arg(long, default_value = "default")]
    pub model: String,
    /// Passes over the training set [default: the preset's].
    #[arg(long)]
    pub epochs: Option<usize>,
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
    /// Train on the GPU (WGSL compute shaders through wgpu) instead of the CPU reference.
    #[arg(long)]
    pub gpu: bool,
    /// With --gpu: use the adapter whose name contains NAME (case-insensitive) [default: WGPU_ADAPTER_NAME, else the first high-performance one]. WGPU_BACKEND=vulkan|metal|dx12|gl picks the API.
    #[arg(long, value_name = "NAME")]
    pub adapter: Option<String>,
}

/// Training defaults for a spec that is not a preset.
const CUSTOM_DEFAULTS: (usize, usize, f32, f32) = (3, 32, 0.05, 0.9);

/// The network and training settings a `--model` value and the options resolve to.
pub struct Resolved {
    pub name: String,
    pub spec: NetSpec,
    pub config: TrainConfig,
}

pub fn resolve_model(args: &TrainArgs) -> Result<Resolved> {
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
        epochs: args.epochs.unwrap_or(defaults.0),
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
pub fn load_data(args: &TrainArgs) -> Result<(data::Dataset, data::Dataset)> {
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
    }
}

fn run_train(args: &TrainArgs) -> Result<()> {
    let resolved = resolve_model(args)?;
    let input = Shape {
        channels: 1,
        height: IMAGE_SIDE,
        width: IMAGE_SIDE,
    };
    let net = Network::new(&resolved.spec, input)
        .map_err(anyhow::Error::msg)
        .context("building the network")?;
    let (train_set, test_set) = load_data(args)?;
    let norm = match args.normalize {
        NormalizeArg::Unit => Normalization::UNIT,
        NormalizeArg::Standard => Normalization::STANDARD,
    };
    let c = resolved.config;
    println!("model {} = {}", resolved.name, resolved.spec);
    print!("{}", net.summary());
    println!(
        "data: {} training images, {} test images from {}",
        train_set.len(),
        test_set.len(),
        args.data.display()
    );
    println!(
        "training: {} epochs, batch size {}, lr {}, momentum {}, seed {}",
        c.epochs, c.batch_size, c.sgd.lr, c.sgd.momentum, c.seed
    );
    let params = net.init_params(c.seed);
    let train_len = train_set.len();
    let mut exec: Box<dyn Executor> = if args.gpu {
        let gpu = Arc::new(Gpu::new(&AdapterChoice {
            name: args.adapter.clone(),
        })?);
        println!("device: {}", gpu.describe());
        let kernels = Arc::new(Kernels::new(&gpu)?);
        Box::new(GpuExecutor::new(
            gpu,
            kernels,
            net,
            &params,
            &train_set,
            &test_set,
            norm,
            c.seed,
            c.batch_size,
        )?)
    } else {
        anyhow::ensure!(args.adapter.is_none(), "--adapter chooses a GPU: add --gpu");
        let exec = CpuReference::new(net, params, train_set, test_set, norm, c.seed);
        println!("device: {}", exec.device());
        Box::new(exec)
    };
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
