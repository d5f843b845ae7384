//! The command line: `train`, `eval`, `predict`, `bench` and `presets`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

pub mod augment;
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
use crate::exec::{Executor, Optimizer, OptimizerKind};
use crate::network::{Network, Shape};
use crate::ops::Augment;
use crate::schedule::{Schedule, ScheduleKind, Warmup};
use crate::spec::{self, NetSpec, PRESETS};
use crate::train::TrainConfig;

#[derive(Debug, Parser)]
#[command(
    name = "wgcnn",
    version,
    about = "Train convolutional networks on MNIST or Fashion-MNIST, on the CPU or on any GPU through WGSL compute shaders"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train a network on MNIST (or --dataset fashion-mnist) and print loss and accuracy after each epoch.
    Train(TrainArgs),
    /// Evaluate a saved model on the test set: loss, accuracy and the confusion matrix.
    Eval(EvalArgs),
    /// Classify pictures (PNG, JPEG, BMP) with a saved model, naming the classes it was trained on.
    Predict(PredictArgs),
    /// Measure training speed: images per second and time per epoch, medians of several runs.
    Bench(BenchArgs),
    /// List the named networks with their specs and training defaults.
    Presets,
    /// Draw a few training images next to their augmented versions (what --augment does).
    Augment(augment::AugmentPreviewArgs),
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
    /// The update rule, as PyTorch's torch.optim.SGD / Adam / AdamW [default: the preset's].
    #[arg(long, value_enum)]
    pub optimizer: Option<OptimizerKind>,
    /// Adam's coefficients of the running averages of the gradient and its square, as
    /// BETA1,BETA2 (each in [0, 1)) [default: the preset's, else 0.9,0.999].
    #[arg(long, value_name = "BETA1,BETA2", value_parser = parse_betas)]
    pub betas: Option<(f32, f32)>,
    /// Adam's term added to the denominator [default: 1e-8].
    #[arg(long, allow_negative_numbers = true)]
    pub eps: Option<f32>,
    /// L2 penalty (sgd, adam) or decoupled weight decay (adamw) [default: the preset's, else 0].
    #[arg(long, allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// Seed of the weight initialisation, the shuffles and the dropout masks [default: 1, or that of --resume].
    #[arg(long)]
    pub seed: Option<u64>,
}

/// Data augmentation of the training images (`train`, `bench`, and `augment` to look at it).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AugmentArgs {
    /// Augment the training images: each moved by a random whole-pixel shift, turned and scaled
    /// about its centre, drawn from the seed and the step, the same on every executor; the test
    /// set never is [default: the preset's (best, fashion), or that of --resume; else off].
    /// Giving any --augment-* option turns it on too.
    #[arg(long)]
    pub augment: bool,
    /// Train on the images as they are, even where the preset or --resume augments.
    #[arg(long, conflicts_with_all = ["augment", "augment_shift", "augment_rotate", "augment_scale", "augment_flip"])]
    pub no_augment: bool,
    /// The largest shift in pixels along each axis, 0 to 8 [default: 2, or the preset's].
    #[arg(long, value_name = "PX")]
    pub augment_shift: Option<u32>,
    /// The largest rotation in degrees, 0 to 45 [default: 10, or the preset's].
    #[arg(long, value_name = "DEG")]
    pub augment_rotate: Option<f32>,
    /// The largest relative change of size, at least 0 and below 0.5 [default: 0.1, or the preset's].
    #[arg(long, value_name = "F")]
    pub augment_scale: Option<f32>,
    /// Also mirror left to right, half the time (for pictures of things, not of digits).
    #[arg(long)]
    pub augment_flip: bool,
}

impl AugmentArgs {
    /// The augmentation asked for, starting from `base` (the preset's or the checkpoint's).
    pub fn resolve(&self, base: Option<Augment>) -> Result<Option<Augment>> {
        if self.no_augment {
            return Ok(None);
        }
        let options = self.augment_shift.is_some()
            || self.augment_rotate.is_some()
            || self.augment_scale.is_some()
            || self.augment_flip;
        let Some(mut a) = base.or((self.augment || options).then_some(Augment::DEFAULT)) else {
            return Ok(None);
        };
        a.shift = self.augment_shift.unwrap_or(a.shift);
        a.rotate = self.augment_rotate.unwrap_or(a.rotate);
        a.scale = self.augment_scale.unwrap_or(a.scale);
        a.flip |= self.augment_flip;
        let flag = |name: &str, ok: bool, expected: String| -> Result<()> {
            anyhow::ensure!(ok, "--augment-{name}: expected {expected}");
            Ok(())
        };
        flag(
            "shift",
            a.shift <= Augment::MAX_SHIFT,
            format!("0 to {} pixels, not {}", Augment::MAX_SHIFT, a.shift),
        )?;
        flag(
            "rotate",
            (0.0..=Augment::MAX_ROTATE).contains(&a.rotate),
            format!("0 to {} degrees, not {}", Augment::MAX_ROTATE, a.rotate),
        )?;
        flag(
            "scale",
            (0.0..Augment::MAX_SCALE).contains(&a.scale),
            format!(
                "at least 0 and below {}, not {}",
                Augment::MAX_SCALE,
                a.scale
            ),
        )?;
        Ok(Some(a))
    }
}

/// For the training header: e.g. "shifts up to 2 px, rotations up to 10 degrees, scaling up to
/// 10%, mirrored half the time".
pub(crate) fn describe_augment(a: Option<&Augment>) -> String {
    let Some(a) = a else {
        return "off".into();
    };
    let mut parts = Vec::new();
    if a.shift > 0 {
        parts.push(format!("shifts up to {} px", a.shift));
    }
    if a.rotate > 0.0 {
        parts.push(format!("rotations up to {} degrees", a.rotate));
    }
    if a.scale > 0.0 {
        parts.push(format!("scaling up to {}%", a.scale * 100.0));
    }
    if a.flip {
        parts.push("mirrored half the time".into());
    }
    if parts.is_empty() {
        return "on, with every range 0 (the images as they are)".into();
    }
    parts.join(", ")
}

/// How the learning rate moves during training (`train` only: `bench` runs at the base rate).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ScheduleArgs {
    /// How the learning rate moves, stepped every batch: constant, step (times --lr-decay every
    /// epoch), cosine (annealed to 0 at the end of the run), onecycle (up from lr/25 to --lr, then
    /// down to lr/25e4) [default: the preset's; step when --lr-decay is given].
    #[arg(long, value_enum)]
    pub schedule: Option<ScheduleKind>,
    /// Warm-up: a number of steps (500) or a fraction of the run (0.1). Linear from lr/W to lr
    /// before constant, step and cosine; for onecycle, the length of the rise [default: none;
    /// onecycle 0.3].
    #[arg(long, value_name = "STEPS|FRACTION", allow_negative_numbers = true)]
    pub warmup: Option<Warmup>,
    /// Multiply the learning rate by this after every epoch, in (0, 1] (the step schedule)
    /// [default: the preset's].
    #[arg(long)]
    pub lr_decay: Option<f32>,
}

/// The data sets shipped in `assets/`, for `--dataset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DatasetName {
    /// MNIST's handwritten digits, assets/mnist
    Mnist,
    /// Zalando's Fashion-MNIST, pictures of clothes, assets/fashion-mnist
    FashionMnist,
}

impl DatasetName {
    /// Its folder, relative to the current one (as `--data`'s default).
    pub fn folder(self) -> PathBuf {
        PathBuf::from(match self {
            DatasetName::Mnist => "assets/mnist",
            DatasetName::FashionMnist => "assets/fashion-mnist",
        })
    }
}

/// `--data`'s default.
pub const DEFAULT_DATA: &str = "assets/mnist";

/// Where the data comes from.
#[derive(Debug, Clone, clap::Args)]
pub struct DataArgs {
    /// Folder holding the data set: IDX files (gzip or not) or mnist_train.csv / mnist_test.csv,
    /// and classes.txt naming the classes, one a line in label order (without it, the digits 0-9)
    /// [default: assets/mnist].
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// A shipped data set by name, short for --data assets/NAME (not with --data).
    #[arg(long, value_enum, value_name = "NAME", conflicts_with = "data")]
    pub dataset: Option<DatasetName>,
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

/// `--betas 0.9,0.999`.
fn parse_betas(text: &str) -> Result<(f32, f32), String> {
    let parts: Vec<&str> = text.split(',').collect();
    let bad = || format!("'{text}': expected BETA1,BETA2 with each in [0, 1), e.g. 0.9,0.999");
    if parts.len() != 2 {
        return Err(bad());
    }
    let beta = |p: &str| -> Result<f32, String> {
        match p.trim().parse::<f32>() {
            Ok(b) if (0.0..1.0).contains(&b) => Ok(b),
            _ => Err(bad()),
        }
    };
    Ok((beta(parts[0])?, beta(parts[1])?))
}

/// Training defaults for a spec that is not a preset: SGD, momentum 0.9, lr 0.05, 3 epochs of
/// batch 32, constant learning rate.
pub(crate) const CUSTOM_DEFAULTS: spec::Preset = spec::Preset {
    name: "custom",
    spec: "",
    description: "",
    epochs: 3,
    batch_size: 32,
    lr: 0.05,
    momentum: 0.9,
    lr_decay: 1.0,
    standardize: false,
    optimizer: OptimizerKind::Sgd,
    betas: (0.9, 0.999),
    weight_decay: 0.0,
    schedule: ScheduleKind::Step,
    warmup: Warmup::None,
    dataset: None,
    augment: None,
};

/// The training settings of `args`, each missing one taken from `defaults` (a preset's or a
/// checkpoint's).
pub(crate) fn train_config(
    args: &ModelArgs,
    schedule: &ScheduleArgs,
    epochs: usize,
    defaults: &spec::Preset,
    seed: u64,
    eps: f32,
) -> Result<TrainConfig> {
    let sched = schedule;
    let lr_decay = sched.lr_decay.unwrap_or(defaults.lr_decay);
    let schedule = match (sched.schedule, sched.lr_decay) {
        (Some(kind), _) => kind,
        (None, Some(_)) => ScheduleKind::Step,
        (None, None) => defaults.schedule,
    };
    let (beta1, beta2) = args.betas.unwrap_or(defaults.betas);
    let config = TrainConfig {
        epochs,
        batch_size: args.batch_size.unwrap_or(defaults.batch_size),
        optimizer: Optimizer {
            kind: args.optimizer.unwrap_or(defaults.optimizer),
            lr: args.lr.unwrap_or(defaults.lr),
            momentum: args.momentum.unwrap_or(defaults.momentum),
            beta1,
            beta2,
            eps: args.eps.unwrap_or(eps),
            weight_decay: args.weight_decay.unwrap_or(defaults.weight_decay),
        },
        schedule: Schedule {
            kind: schedule,
            decay: lr_decay,
            warmup: sched.warmup.unwrap_or(defaults.warmup),
        },
        seed: args.seed.unwrap_or(seed),
    };
    check_config(&config)?;
    Ok(config)
}

/// The network and training settings a `--model` value and the options resolve to.
pub struct Resolved {
    pub name: String,
    pub spec: NetSpec,
    pub config: TrainConfig,
    /// The preset's input normalisation (unit for a custom spec).
    pub standardize: bool,
    /// The preset's augmentation of the training images (none for a custom spec).
    pub augment: Option<Augment>,
}

pub fn resolve_model(
    args: &ModelArgs,
    schedule: &ScheduleArgs,
    epochs: Option<usize>,
) -> Result<Resolved> {
    let model = args.model.as_deref().unwrap_or("default");
    let looks_like_spec =
        model.contains('-') || model.starts_with("conv") || model.starts_with("dense");
    let (name, spec_text, defaults) = match spec::preset(model) {
        Ok(p) => (p.name.to_string(), p.spec.to_string(), *p),
        Err(_) if looks_like_spec => ("custom".to_string(), model.to_string(), CUSTOM_DEFAULTS),
        Err(e) => anyhow::bail!(e),
    };
    let spec = NetSpec::parse(&spec_text).map_err(anyhow::Error::msg)?;
    let epochs = epochs.unwrap_or(defaults.epochs);
    let config = train_config(
        args,
        schedule,
        epochs,
        &defaults,
        1,
        Optimizer::default().eps,
    )?;
    let standardize = spec::preset(model).is_ok_and(|p| p.standardize);
    Ok(Resolved {
        name,
        spec,
        config,
        standardize,
        augment: defaults.augment,
    })
}

pub(crate) fn check_config(config: &TrainConfig) -> Result<()> {
    let o = &config.optimizer;
    anyhow::ensure!(config.batch_size >= 1, "--batch-size must be at least 1");
    anyhow::ensure!(
        o.lr.is_finite() && o.lr > 0.0,
        "--lr must be a positive number, not {}",
        o.lr
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&o.momentum),
        "--momentum must be in [0, 1), not {}",
        o.momentum
    );
    anyhow::ensure!(
        (0.0..1.0).contains(&o.beta1) && (0.0..1.0).contains(&o.beta2),
        "--betas must each be in [0, 1), not {},{}",
        o.beta1,
        o.beta2
    );
    anyhow::ensure!(
        o.eps.is_finite() && o.eps > 0.0,
        "--eps must be a positive number, not {}",
        o.eps
    );
    anyhow::ensure!(
        o.weight_decay.is_finite() && o.weight_decay >= 0.0,
        "--weight-decay must be 0 or more, not {}",
        o.weight_decay
    );
    anyhow::ensure!(
        o.kind != OptimizerKind::AdamW || o.lr * o.weight_decay < 1.0,
        "--weight-decay {} with --lr {} would shrink the weights by {} each step (AdamW multiplies them by 1 - lr x weight decay); use a smaller decay",
        o.weight_decay,
        o.lr,
        o.lr * o.weight_decay
    );
    anyhow::ensure!(
        config.schedule.decay > 0.0 && config.schedule.decay <= 1.0,
        "--lr-decay must be in (0, 1], not {}",
        config.schedule.decay
    );
    Ok(())
}

impl DataArgs {
    /// The folder `--data` or `--dataset` names, if either is given.
    pub fn chosen_folder(&self) -> Option<PathBuf> {
        self.data
            .clone()
            .or_else(|| self.dataset.map(DatasetName::folder))
    }

    /// The folder `--data` or `--dataset` names, else `assets/mnist`.
    pub fn folder(&self) -> PathBuf {
        self.chosen_folder()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))
    }
}

/// The data folder of a new run: `--data` or `--dataset`, else the data set of the preset
/// `--model` names (`fashion` trains on Fashion-MNIST), else `assets/mnist`.
pub(crate) fn run_data_folder(data: &DataArgs, model: &ModelArgs) -> PathBuf {
    let preset = model.model.as_deref().unwrap_or("default");
    let preset_set = spec::preset(preset).ok().and_then(|p| p.dataset);
    data.chosen_folder()
        .or_else(|| {
            preset_set
                .and_then(|name| DatasetName::from_str(name, false).ok())
                .map(DatasetName::folder)
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))
}

/// The folder of the shipped data set (`--dataset`) whose classes are `names`; `assets/mnist`
/// if none is.
pub(crate) fn shipped_folder_of(names: &[String]) -> PathBuf {
    DatasetName::value_variants()
        .iter()
        .map(|d| d.folder())
        .find(|folder| folder.is_dir() && data::class_names(folder).is_ok_and(|n| n == names))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA))
}

/// Load both splits from `folder` (`args.folder()` but where a command chooses its own default),
/// applying the limits of `args`.
pub fn load_data(args: &DataArgs, folder: &std::path::Path) -> Result<(Dataset, Dataset)> {
    let mut train = data::load_split(folder, Split::Train)?;
    let mut test = data::load_split(folder, Split::Test)?;
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

/// Before anything is allocated: does a CPU executor's memory, at the least, fit in what the
/// machine has available (Linux's MemAvailable; elsewhere the check is skipped)? The GPU executor
/// checks its own limits.
pub(crate) fn check_memory(net: &Network, batch_size: usize, device: &DeviceArgs) -> Result<()> {
    if device.gpu {
        return Ok(());
    }
    let Some(available) = available_memory() else {
        return Ok(());
    };
    let (fixed, per_sample) = net.memory_estimate();
    let needed = fixed.saturating_add(per_sample.saturating_mul(batch_size as u64));
    if needed > available {
        let fits = available.saturating_sub(fixed) / per_sample.max(1);
        let advice = if fits >= 1 {
            format!("use --batch-size {fits} or less, or a smaller network")
        } else {
            "its parameters alone do not fit: use a smaller network".to_string()
        };
        anyhow::bail!(
            "the network {} at batch size {batch_size} needs at least {} MiB on the CPU, more than the {} MiB available; {advice}",
            net.spec,
            needed >> 20,
            available >> 20
        );
    }
    Ok(())
}

fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Before any work: each output path can be written (its folder exists and takes a new file, it
/// is not a folder), no two outputs are the same file, and no output is an input, except that
/// `--save` may overwrite the checkpoint `--resume` read (continuing a run in place).
pub(crate) fn check_outputs(
    outputs: &[(&str, &std::path::Path)],
    inputs: &[(&str, &std::path::Path)],
) -> Result<()> {
    // The same file, whether it exists yet or not: its folder canonicalised, plus its name.
    let identity = |path: &std::path::Path| -> Option<PathBuf> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        Some(dir.canonicalize().ok()?.join(path.file_name()?))
    };
    for (i, &(flag, path)) in outputs.iter().enumerate() {
        let shown = path.display();
        if path.is_dir() {
            anyhow::bail!("{flag} {shown}: is a folder; expected a file name");
        }
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if !dir.is_dir() {
            anyhow::bail!(
                "{flag} {shown}: cannot write: the folder {} does not exist",
                dir.display()
            );
        }
        if path.file_name().is_none() {
            anyhow::bail!("{flag} {shown}: expected a file name");
        }
        // Can a file be created there? (A probe, removed at once.)
        let probe = dir.join(format!(".wgcnn-probe-{}", std::process::id()));
        match std::fs::File::create(&probe) {
            Ok(_) => {
                let _ = std::fs::remove_file(&probe);
            }
            Err(e) => anyhow::bail!("{flag} {shown}: cannot write in {}: {e}", dir.display()),
        }
        if path.exists() && !path.is_file() {
            anyhow::bail!(
                "{flag} {shown}: not a regular file (a device or pipe?); expected a file to write"
            );
        }
        let me = identity(path);
        for &(other_flag, other) in &outputs[i + 1..] {
            if me.is_some() && me == identity(other) {
                anyhow::bail!(
                    "{flag} and {other_flag} are the same file, {shown}; give each its own"
                );
            }
        }
        for &(input_flag, input) in inputs {
            let same = me.is_some() && me == identity(input);
            if same && !(flag == "--save" && input_flag == "--resume") {
                anyhow::bail!("{flag} {shown} is the {input_flag} file: writing it would destroy the input; give another name");
            }
        }
    }
    Ok(())
}

pub(crate) fn mnist_network(spec: &NetSpec) -> Result<Network> {
    let net = Network::new(spec, MNIST_INPUT)
        .map_err(anyhow::Error::msg)
        .context("building the network")?;
    net.check_outputs(data::NUM_CLASSES)
        .map_err(anyhow::Error::msg)?;
    Ok(net)
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Presets => {
            for p in PRESETS {
                println!("{:<13} {}", p.name, p.description);
                let optimizer = match p.optimizer {
                    OptimizerKind::Sgd => format!("sgd, momentum {}", p.momentum),
                    kind => format!("{kind}, betas {},{}", p.betas.0, p.betas.1),
                };
                let schedule = match p.schedule {
                    ScheduleKind::Step if p.lr_decay == 1.0 => "constant".to_string(),
                    ScheduleKind::Step => format!("lr decay {}", p.lr_decay),
                    kind => kind.to_string(),
                };
                println!(
                    "{:<13} spec {}  (epochs {}, batch size {}, {optimizer}, lr {}, {schedule}, normalize {})",
                    "",
                    p.spec,
                    p.epochs,
                    p.batch_size,
                    p.lr,
                    if p.standardize { "standard" } else { "unit" }
                );
                if p.dataset.is_some() || p.augment.is_some() || p.weight_decay != 0.0 {
                    println!(
                        "{:<13} data {}, weight decay {}, augmentation: {}",
                        "",
                        p.dataset.unwrap_or("mnist"),
                        p.weight_decay,
                        describe_augment(p.augment.as_ref())
                    );
                }
            }
            Ok(())
        }
        Command::Train(args) => train::run_train(&args),
        Command::Eval(args) => eval::run_eval(&args),
        Command::Predict(args) => predict::run_predict(&args),
        Command::Bench(args) => bench::run_bench(&args),
        Command::Augment(args) => augment::run_augment(&args),
    }
}

pub(crate) fn empty_dataset() -> Dataset {
    Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        source: "none".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_names_a_shipped_data_set_and_a_valid_augmentation() {
        for p in PRESETS {
            if let Some(name) = p.dataset {
                let set = DatasetName::from_str(name, false);
                assert!(set.is_ok(), "{}: dataset {name}", p.name);
            }
            if let Some(a) = p.augment {
                assert_eq!(a.check(), Ok(()), "{}", p.name);
            }
        }
    }
}
