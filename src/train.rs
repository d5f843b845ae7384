//! The training loop, the same for every executor: shuffle, minibatch optimizer steps (the
//! learning rate scheduled per step), then evaluate, once per epoch.

use std::time::Instant;

use anyhow::Result;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::Split;
use crate::exec::{Diverged, Executor, Metrics, Optimizer};
use crate::schedule::Schedule;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    /// The optimizer, with the base learning rate (the schedule's peak for one-cycle).
    pub optimizer: Optimizer,
    /// How the learning rate moves, step by step.
    pub schedule: Schedule,
    pub seed: u64,
}

impl TrainConfig {
    /// The optimizer of global step `step` (0-based), the learning rate scheduled, for a
    /// training set of `train_len` images.
    pub fn optimizer_at(&self, step: u64, train_len: usize) -> Optimizer {
        let per_epoch = train_len.div_ceil(self.batch_size.max(1)) as u64;
        let total = per_epoch * self.epochs as u64;
        let lr = self.schedule.lr(self.optimizer.lr, step, total, per_epoch);
        self.optimizer.with_lr(lr)
    }
}

/// What one epoch achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochReport {
    /// 1-based.
    pub epoch: usize,
    /// Averaged over the epoch's steps, as the weights changed (dropout active).
    pub train: Metrics,
    /// After the epoch, dropout off.
    pub test: Metrics,
    /// Wall time of the epoch: training and evaluation.
    pub seconds: f64,
    /// Training images per second (training steps only).
    pub images_per_second: f64,
    /// The learning rate of the epoch's last step.
    pub lr: f32,
}

impl EpochReport {
    /// One line: `epoch 1/3  train loss 0.3412 acc 89.71%  test loss 0.1234 acc 96.30%  12.3 s  4878 img/s`.
    pub fn line(&self, epochs: usize) -> String {
        format!(
            "epoch {}/{}  train loss {:.4} acc {:6.2}%  test loss {:.4} acc {:6.2}%  {:7.2} s  {:8.0} img/s",
            self.epoch,
            epochs,
            self.train.mean_loss(),
            100.0 * self.train.accuracy(),
            self.test.mean_loss(),
            100.0 * self.test.accuracy(),
            self.seconds,
            self.images_per_second
        )
    }
}

/// The order of the training images in each epoch: a seeded shuffle of the images, epoch `e`
/// (1-based) drawn from its own stream `e` of the run's seed, so that it does not depend on how
/// many numbers the weight initialisation drew, and so that any epoch's order costs the same to
/// reach: resuming at epoch 1000000 does not replay the 999999 before it.
pub struct Shuffler {
    seed: u64,
    /// The epoch whose order `order` holds (0: none yet).
    epoch: u64,
    order: Vec<u32>,
}

impl Shuffler {
    pub fn new(seed: u64, len: usize) -> Self {
        Shuffler {
            seed,
            epoch: 0,
            order: (0..len as u32).collect(),
        }
    }

    /// Continue from epoch `first` (1-based): the next [`Shuffler::next_epoch`] is its order.
    pub fn start_at(&mut self, first: usize) {
        self.epoch = first.saturating_sub(1) as u64;
    }

    pub fn next_epoch(&mut self) -> &[u32] {
        self.epoch += 1;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.epoch);
        for (i, v) in self.order.iter_mut().enumerate() {
            *v = i as u32;
        }
        self.order.shuffle(&mut rng);
        &self.order
    }
}

/// Where training stands within an epoch, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    pub epoch: usize,
    /// Steps done in this epoch.
    pub step: usize,
    pub steps_per_epoch: usize,
    /// Training loss and accuracy over this epoch's steps so far.
    pub so_far: Metrics,
    /// Seconds since the epoch began.
    pub seconds: f64,
    /// The learning rate of the last step.
    pub lr: f32,
}

/// What the training loop reports to; every method has a do-nothing default.
pub trait Observer {
    /// Called every `progress_every` steps (see [`train`]).
    fn progress(&mut self, _progress: &Progress) {}
    /// Called after each epoch; an error stops training (a checkpoint that cannot be written, say).
    fn epoch_done(&mut self, _report: &EpochReport, _exec: &mut dyn Executor) -> Result<()> {
        Ok(())
    }
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

/// Train epochs `first_epoch..=last_epoch` of a run planned for `config.epochs` (1-based;
/// `first_epoch > 1` resumes a run, `last_epoch < config.epochs` stops it early: the shuffles, the
/// step numbers and the schedule are those of the whole planned run either way) over `train_len`
/// images. Every `progress_every` steps (0: never) the running training metrics are read back and
/// passed to `observer.progress`. A loss that stops being finite ends training with an error
/// naming the epoch and the step.
pub fn train(
    exec: &mut dyn Executor,
    config: &TrainConfig,
    train_len: usize,
    first_epoch: usize,
    last_epoch: usize,
    progress_every: usize,
    observer: &mut dyn Observer,
) -> Result<Vec<EpochReport>> {
    anyhow::ensure!(config.batch_size > 0, "--batch-size must be at least 1");
    anyhow::ensure!(train_len > 0, "the training set is empty");
    let steps_per_epoch = train_len.div_ceil(config.batch_size);
    let mut shuffler = Shuffler::new(config.seed, train_len);
    shuffler.start_at(first_epoch);
    let mut reports = Vec::new();
    let diverged = |e: anyhow::Error| -> anyhow::Error {
        match e.downcast_ref::<Diverged>() {
            Some(d) => anyhow::anyhow!(
                "training diverged in epoch {} at step {} of {}: the loss became {}. \
                 Try a smaller --lr (it was {} at that step).",
                d.step as usize / steps_per_epoch + 1,
                d.step as usize % steps_per_epoch + 1,
                steps_per_epoch,
                d.loss,
                config.optimizer_at(d.step as u64, train_len).lr
            ),
            None => e,
        }
    };
    for epoch in first_epoch..=last_epoch.min(config.epochs) {
        let started = Instant::now();
        exec.begin_epoch(shuffler.next_epoch())?;
        let mut train = Metrics::default();
        let mut lr = config.optimizer.lr;
        for step_in_epoch in 0..steps_per_epoch {
            let start = step_in_epoch * config.batch_size;
            let len = config.batch_size.min(train_len - start);
            let step = ((epoch - 1) * steps_per_epoch + step_in_epoch) as u32;
            let opt = config.optimizer_at(step as u64, train_len);
            lr = opt.lr;
            exec.train_step(start, len, step, opt).map_err(diverged)?;
            let done = step_in_epoch + 1;
            if progress_every > 0 && done % progress_every == 0 && done < steps_per_epoch {
                add(&mut train, exec.take_train_metrics().map_err(diverged)?);
                let seconds = started.elapsed().as_secs_f64();
                observer.progress(&Progress {
                    epoch,
                    step: done,
                    steps_per_epoch,
                    so_far: train,
                    seconds,
                    lr,
                });
            }
        }
        add(&mut train, exec.take_train_metrics().map_err(diverged)?);
        let train_seconds = started.elapsed().as_secs_f64();
        let test = exec.evaluate(Split::Test)?;
        let report = EpochReport {
            epoch,
            train,
            test,
            seconds: started.elapsed().as_secs_f64(),
            images_per_second: train_len as f64 / train_seconds,
            lr,
        };
        observer.epoch_done(&report, exec)?;
        reports.push(report);
    }
    Ok(reports)
}

fn add(total: &mut Metrics, more: Metrics) {
    total.loss_sum += more.loss_sum;
    total.correct += more.correct;
    total.count += more.count;
}

#[cfg(test)]
mod tests {
    use super::Shuffler;

    /// Jumping to an epoch gives the order that epoch gets in an uninterrupted run, at the cost of
    /// one shuffle, however far the jump.
    #[test]
    fn a_shuffler_starts_at_any_epoch_in_constant_work() {
        let mut straight = Shuffler::new(9, 1000);
        let orders: Vec<Vec<u32>> = (0..5).map(|_| straight.next_epoch().to_vec()).collect();
        assert_ne!(orders[0], orders[1]);
        let mut jumped = Shuffler::new(9, 1000);
        jumped.start_at(4);
        assert_eq!(jumped.next_epoch(), &orders[3][..]);
        assert_eq!(jumped.next_epoch(), &orders[4][..]);
        // One shuffle, not 2^40 of them (replaying would never finish).
        let mut far = Shuffler::new(9, 60000);
        far.start_at(1 << 40);
        assert_eq!(far.next_epoch().len(), 60000);
    }
}
