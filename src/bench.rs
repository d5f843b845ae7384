//! The training benchmark: a fixed number of SGD steps of a network on real MNIST batches,
//! after warm-up, repeated; medians reported. The same measurement for every executor, so CPU,
//! GPU and PyTorch (`bench/pytorch_reference.py`) figures can be set side by side.

use std::time::Instant;

use anyhow::Result;

use crate::executor::{Executor, Sgd};
use crate::train::Shuffler;

#[derive(Debug, Clone, PartialEq)]
pub struct BenchConfig {
    pub batch_size: usize,
    /// Timed steps per repetition.
    pub steps: usize,
    /// Untimed steps before the first repetition (pipeline warm-up, caches, lazy allocation).
    pub warmup: usize,
    pub repeats: usize,
    pub sgd: Sgd,
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
            config.sgd,
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
