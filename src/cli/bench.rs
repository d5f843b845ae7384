//! `wgcnn bench`: the training benchmark, a fixed number of optimizer steps of a network on real MNIST
//! batches, after warm-up, repeated; medians reported. The same measurement for every executor,
//! so CPU, GPU and PyTorch (`bench/pytorch_reference.py`) figures can be set side by side. With
//! `--profile`, the executor's per-op profile of those steps.

use std::time::Instant;

use anyhow::Result;

use super::{load_data, make_executor, mnist_network, preset_normalization, resolve_model};
use super::{DataArgs, DeviceArgs, ModelArgs};
use crate::exec::{Executor, Optimizer};
use crate::train::Shuffler;

#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    pub batch_size: usize,
    /// Timed steps per repetition.
    pub steps: usize,
    /// Untimed steps before the first repetition (pipeline warm-up, caches, lazy allocation).
    pub warmup: usize,
    pub repeats: usize,
    /// The optimizer at its base learning rate (the benchmark does not schedule it).
    pub optimizer: Optimizer,
    pub seed: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BenchResult {
    pub device: String,
    pub batch_size: usize,
    pub steps: usize,
    /// Training images per second of each repetition.
    pub images_per_second: Vec<f64>,
    /// Median of `images_per_second`.
    pub median_images_per_second: f64,
    /// Median milliseconds per step.
    pub median_step_ms: f64,
    /// Seconds one epoch over `train_len` images takes at the median rate (training only).
    pub epoch_seconds: f64,
    pub train_len: usize,
}

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Time `config.repeats` runs of `config.steps` training steps. Each run ends by reading the
/// training metrics back, which waits for an asynchronous executor to finish.
pub fn run(exec: &mut dyn Executor, config: &BenchConfig, train_len: usize) -> Result<BenchResult> {
    anyhow::ensure!(
        config.steps >= 1 && config.repeats >= 1,
        "--steps and --repeats must be at least 1"
    );
    anyhow::ensure!(
        config.batch_size >= 1 && config.batch_size <= train_len,
        "--batch-size must be between 1 and the {train_len} training images"
    );
    let mut shuffler = Shuffler::new(config.seed, train_len);
    let steps_per_epoch = train_len / config.batch_size;
    let mut position = steps_per_epoch; // start a new epoch at once
    let mut step_number = 0u32;
    let mut next_step = |exec: &mut dyn Executor| -> Result<()> {
        if position == steps_per_epoch {
            exec.begin_epoch(shuffler.next_epoch())?;
            position = 0;
        }
        exec.train_step(
            position * config.batch_size,
            config.batch_size,
            step_number,
            config.optimizer,
        )?;
        position += 1;
        step_number += 1;
        Ok(())
    };
    for _ in 0..config.warmup {
        next_step(exec)?;
    }
    exec.take_train_metrics()?;
    let mut rates = Vec::new();
    for _ in 0..config.repeats {
        let started = Instant::now();
        for _ in 0..config.steps {
            next_step(exec)?;
        }
        exec.take_train_metrics()?;
        rates.push((config.steps * config.batch_size) as f64 / started.elapsed().as_secs_f64());
    }
    let rate = median(&rates);
    Ok(BenchResult {
        device: exec.device(),
        batch_size: config.batch_size,
        steps: config.steps,
        median_images_per_second: rate,
        median_step_ms: 1000.0 * config.batch_size as f64 / rate,
        epoch_seconds: train_len as f64 / rate,
        images_per_second: rates,
        train_len,
    })
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
    /// Time every op of a training step: with --gpu each kernel, by the GPU's timestamps where
    /// the adapter has them (else each on its own with a wait, slower); or each layer of the fast
    /// CPU executor.
    #[arg(long)]
    pub profile: bool,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub augment: super::AugmentArgs,
}

pub fn run_bench(args: &BenchArgs) -> Result<()> {
    let resolved = resolve_model(&args.model, &super::ScheduleArgs::default(), None)?;
    let net = mnist_network(&resolved.spec)?;
    let (train_set, test_set) =
        load_data(&args.data, &super::run_data_folder(&args.data, &args.model))?;
    let c = resolved.config;
    let train_len = train_set.len();
    let parameters = net.parameter_count();
    super::check_memory(&net, c.batch_size, &args.device)?;
    let params = net.init_params(c.seed);
    let norm = preset_normalization(args.data.normalize, resolved.standardize);
    anyhow::ensure!(
        !(args.profile && args.device.cpu_reference),
        "--profile times the GPU kernels (--gpu) or the fast CPU executor's ops, not the reference"
    );
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
    exec.set_augment(args.augment.resolve(resolved.augment)?)?;
    if args.profile {
        let config = BenchConfig {
            batch_size: c.batch_size,
            steps: args.steps,
            warmup: 0,
            repeats: 1,
            optimizer: c.optimizer,
            seed: c.seed,
        };
        // Warm up first (pipelines, caches, the thread pool), as the timed benchmark does.
        let warm = BenchConfig {
            steps: 1,
            warmup: args.warmup,
            ..config.clone()
        };
        run(exec.as_mut(), &warm, train_len)?;
        exec.enable_profiling()?;
        run(exec.as_mut(), &config, train_len)?;
        let profile = exec.profile();
        let device = exec.device();
        let total: f64 = profile.iter().map(|p| p.seconds).sum();
        println!(
            "op times of a training step on {} (batch {}), mean of {} steps; {}:",
            device,
            c.batch_size,
            args.steps,
            exec.profile_method()
        );
        println!(
            "  {:<34} {:>10} {:>6} {:>9} {:>8}",
            "op", "us", "%", "GFLOP/s", "GB/s"
        );
        let rate = |amount: f64, seconds: f64| {
            if amount > 0.0 && seconds > 0.0 {
                format!("{:.2}", amount / seconds * 1e-9)
            } else {
                "-".into()
            }
        };
        for p in &profile {
            println!(
                "  {:<34} {:>10.1} {:>6.1} {:>9} {:>8}",
                p.name,
                1e6 * p.seconds / p.calls.max(1) as f64,
                100.0 * p.seconds / total,
                rate(p.flops, p.seconds),
                rate(p.bytes, p.seconds),
            );
        }
        println!(
            "  {:<34} {:>10.1}",
            "total",
            1e6 * total / args.steps as f64
        );
        return Ok(());
    }
    let config = BenchConfig {
        batch_size: c.batch_size,
        steps: args.steps,
        warmup: args.warmup,
        repeats: args.repeats,
        optimizer: c.optimizer,
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
    let r = run(exec.as_mut(), &config, train_len)?;
    if args.json {
        let value = serde_json::json!({
            "model": resolved.name,
            "spec": resolved.spec.to_string(),
            "parameters": parameters,
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
