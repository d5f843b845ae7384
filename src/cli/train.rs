//! `wgcnn train`: train a network, report every epoch, save checkpoints, plots and metrics.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result};

use super::{
    load_data, make_executor, mnist_network, normalization, preset_normalization, resolve_model,
    train_config, DataArgs, DeviceArgs, ModelArgs, ScheduleArgs, CUSTOM_DEFAULTS, MNIST_INPUT,
};
use crate::checkpoint::{self, CheckpointInfo, OptimizerState};
use crate::data;
use crate::exec::{Executor, Optimizer, OptimizerKind};
use crate::plot;
use crate::spec::{self, NetSpec};
use crate::train;

#[derive(Debug, clap::Args)]
#[command(mut_arg("data", |a| a.help(TRAIN_DATA_HELP)))]
pub struct TrainArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub schedule: ScheduleArgs,
    #[command(flatten)]
    pub augment: super::AugmentArgs,
    /// Epochs to reach, counting those of --resume [default: the preset's; with --resume, one more].
    #[arg(long)]
    pub epochs: Option<usize>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    /// Write the weights (PyTorch names and layouts), the optimizer's state, spec, seed, epoch and
    /// training settings as safetensors after every epoch; the write is atomic.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Stop after this epoch, although the run (and its learning-rate schedule) is planned for
    /// --epochs: continue it later with --resume.
    #[arg(long, value_name = "EPOCH")]
    pub stop_after: Option<usize>,
    /// Continue training from a checkpoint written by --save (weights, optimizer state, schedule):
    /// the run goes on as if it had not stopped.
    #[arg(long, value_name = "FILE")]
    pub resume: Option<PathBuf>,
    /// Draw train and test loss and accuracy per epoch into this PNG (redrawn after every epoch).
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Append one JSON object per epoch to this file (epoch, losses, accuracies, seconds, images/s,
    /// the learning rate of the epoch's last step, device, model, the class names).
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    /// Print only the final summary.
    #[arg(long)]
    pub quiet: bool,
}

/// `--data`'s help for `train`, whose default follows --resume's checkpoint.
const TRAIN_DATA_HELP: &str = "Folder holding the data set: IDX files (gzip or not) or mnist_train.csv / mnist_test.csv, and classes.txt naming the classes, one a line in label order (without it, the digits 0-9) [default: assets/mnist]; with --resume, the shipped data set whose classes the checkpoint names";

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
            "loss {:.4} acc {:.2}%  lr {:.3e}  {:.0} img/s",
            p.so_far.mean_loss(),
            100.0 * p.so_far.accuracy(),
            p.lr,
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
                "lr": r.lr,
                "device": self.device,
                "model": self.model,
                "classes": self.info.classes,
                "augment": self.info.augment.map(|a| a.to_string()),
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
            let running = exec.buffers()?;
            let state = OptimizerState {
                first: exec.momentum()?,
                second: match self.info.optimizer.kind {
                    OptimizerKind::Sgd => None,
                    _ => Some(exec.second_moment()?),
                },
            };
            let info = CheckpointInfo {
                epoch: r.epoch,
                step: r.epoch as u64 * self.steps_per_epoch,
                ..self.info.clone()
            };
            checkpoint::save(path, exec.network(), &params, &running, Some(&state), &info)?;
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

pub fn run_train(args: &TrainArgs) -> Result<()> {
    // Every output is checked before any work, not after the first epoch.
    let outputs: Vec<(&str, &std::path::Path)> = [
        ("--save", &args.save),
        ("--plot", &args.plot),
        ("--metrics", &args.metrics),
    ]
    .into_iter()
    .filter_map(|(flag, path)| path.as_deref().map(|p| (flag, p)))
    .collect();
    let resume = args.resume.as_deref().map(|p| ("--resume", p));
    super::check_outputs(&outputs, resume.as_slice())?;
    let input = MNIST_INPUT;
    // With --resume, the checkpoint supplies the network and the defaults; options still override.
    let resumed = args
        .resume
        .as_ref()
        .map(|path| checkpoint::load(path, input, None))
        .transpose()?;
    // The data: --data or --dataset; else, resuming, the shipped data set whose classes the
    // checkpoint names; else assets/mnist. Checkpoints record the names of its classes.
    let data_folder = match (args.data.chosen_folder(), &resumed) {
        (Some(folder), _) => folder,
        (None, Some(ck)) => super::shipped_folder_of(&ck.info.classes),
        (None, None) => super::run_data_folder(&args.data, &args.model),
    };
    let classes = data::class_names(&data_folder)?;
    let (name, spec, config, norm, first_epoch, params, running, state, augment) = match resumed {
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
            if i.classes != classes {
                eprintln!(
                    "note: {} names its classes {}, but {} holds {}; the model continues on the data, under the data's names",
                    args.resume.as_ref().unwrap().display(),
                    i.classes.join(", "),
                    data_folder.display(),
                    classes.join(", ")
                );
            }
            // The checkpoint's settings are the defaults; the run's planned length too, so that
            // a schedule goes on as it would have (one more epoch when the plan is done).
            let defaults = spec::Preset {
                epochs: if i.epochs > i.epoch {
                    i.epochs
                } else {
                    i.epoch + 1
                },
                batch_size: i.batch_size,
                lr: i.optimizer.lr,
                momentum: i.optimizer.momentum,
                lr_decay: i.schedule.decay,
                optimizer: i.optimizer.kind,
                betas: (i.optimizer.beta1, i.optimizer.beta2),
                weight_decay: i.optimizer.weight_decay,
                schedule: i.schedule.kind,
                warmup: i.schedule.warmup,
                ..CUSTOM_DEFAULTS
            };
            let epochs = args.epochs.unwrap_or(defaults.epochs);
            let config = train_config(
                &args.model,
                &args.schedule,
                epochs,
                &defaults,
                i.seed,
                i.optimizer.eps,
            )?;
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
                ck.buffers,
                // Adam and AdamW share their state; SGD's momentum is not Adam's moments
                ck.state.filter(|_| {
                    let same = (i.optimizer.kind == OptimizerKind::Sgd)
                        == (config.optimizer.kind == OptimizerKind::Sgd);
                    if !same {
                        eprintln!(
                            "note: {} was trained with {}; {} starts from zero state",
                            args.resume.as_ref().unwrap().display(),
                            i.optimizer.kind,
                            config.optimizer.kind
                        );
                    }
                    same
                }),
                args.augment.resolve(i.augment)?,
            )
        }
        None => {
            let r = resolve_model(&args.model, &args.schedule, args.epochs)?;
            let net = mnist_network(&r.spec)?;
            super::check_memory(&net, r.config.batch_size, &args.device)?;
            let params = net.init_params(r.config.seed);
            (
                r.name,
                r.spec,
                r.config,
                preset_normalization(args.data.normalize, r.standardize),
                1,
                params,
                net.init_buffers(),
                None,
                args.augment.resolve(r.augment)?,
            )
        }
    };
    let net = mnist_network(&spec)?;
    super::check_memory(&net, config.batch_size, &args.device)?;
    let (train_set, test_set) = load_data(&args.data, &data_folder)?;
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
        data_folder.display()
    ));
    if classes != data::digit_classes() {
        say(format!("classes: {}", classes.join(", ")));
    }
    let last_epoch = args.stop_after.unwrap_or(c.epochs).min(c.epochs);
    anyhow::ensure!(
        last_epoch >= first_epoch || first_epoch > c.epochs,
        "--stop-after {last_epoch}: the run is already past epoch {last_epoch} (it resumes at epoch {first_epoch})"
    );
    let steps_per_epoch = train_set.len().div_ceil(c.batch_size);
    // A flat batch normalization cannot train on a batch of one, nor on a last batch of one.
    net.check_batch(c.batch_size)
        .and_then(|_| match train_set.len() % c.batch_size {
            1 => net.check_batch(1).map_err(|e| {
                format!(
                    "{e}; with {} training images, --batch-size {} leaves a last batch of 1",
                    train_set.len(),
                    c.batch_size
                )
            }),
            _ => Ok(()),
        })
        .map_err(anyhow::Error::msg)?;
    let total_steps = (steps_per_epoch * c.epochs) as u64;
    say(format!(
        "training: epochs {first_epoch}..={}{}, batch size {}, {}, lr schedule {}, seed {}",
        c.epochs,
        if last_epoch < c.epochs {
            format!(" (stopping after {last_epoch})")
        } else {
            String::new()
        },
        c.batch_size,
        describe_optimizer(&c.optimizer),
        c.schedule.describe(total_steps),
        c.seed
    ));
    say(format!(
        "augmentation: {}",
        super::describe_augment(augment.as_ref())
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
    exec.set_buffers(&running)?;
    exec.set_augment(augment)?;
    if let Some(state) = &state {
        exec.set_momentum(&state.first)?;
        if let Some(second) = &state.second {
            exec.set_second_moment(second)?;
        }
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
            epochs: c.epochs,
            step: 0,
            batch_size: c.batch_size,
            optimizer: c.optimizer,
            schedule: c.schedule,
            normalization: norm,
            classes,
            augment,
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
        last_epoch,
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

/// For the training header: e.g. "optimizer adam (lr 0.01, betas 0.7,0.9, eps 1e-8)".
fn describe_optimizer(o: &Optimizer) -> String {
    let decay = if o.weight_decay != 0.0 {
        format!(", weight decay {}", o.weight_decay)
    } else {
        String::new()
    };
    match o.kind {
        OptimizerKind::Sgd => format!(
            "optimizer sgd (lr {}, momentum {}{decay})",
            o.lr, o.momentum
        ),
        kind => format!(
            "optimizer {kind} (lr {}, betas {},{}, eps {:e}{decay})",
            o.lr, o.beta1, o.beta2, o.eps
        ),
    }
}
