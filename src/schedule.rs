//! Learning-rate schedules, stepped once per batch (PyTorch's `lr_scheduler` formulas).
//!
//! With `total` steps in the run (epochs x steps per epoch) and `t` the 0-based global step:
//! - `constant`: `lr`.
//! - `step`: `lr * decay^epoch`, `epoch` counted from 0 (`StepLR(step_size = one epoch)`; the
//!   former `--lr-decay`).
//! - `cosine`: `lr * (1 + cos(pi * t' / T')) / 2` (`CosineAnnealingLR(T_max = T', eta_min = 0)`).
//! - `onecycle`: `OneCycleLR(max_lr = lr, total_steps = total)` with its defaults: cosine from
//!   `lr / 25` up to `lr` over the first 30% of the steps (or the warm-up, when given), then down
//!   to `lr / 25 / 1e4`; without momentum cycling (`cycle_momentum = False`: the optimizer's
//!   momentum or betas stay as given).
//!
//! A warm-up of `W` steps (constant, step and cosine) ramps linearly first: `lr * (t + 1) / W` for
//! `t < W` (`LinearLR(start_factor = 1 / W, total_iters = W - 1)`), then the schedule runs over the
//! remaining steps (`t' = t - W`, `T' = total - W`).

/// Which schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ScheduleKind {
    #[default]
    Constant,
    Step,
    Cosine,
    #[value(name = "onecycle")]
    OneCycle,
}

impl std::fmt::Display for ScheduleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ScheduleKind::Constant => "constant",
            ScheduleKind::Step => "step",
            ScheduleKind::Cosine => "cosine",
            ScheduleKind::OneCycle => "onecycle",
        })
    }
}

impl std::str::FromStr for ScheduleKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "constant" => Ok(ScheduleKind::Constant),
            "step" => Ok(ScheduleKind::Step),
            "cosine" => Ok(ScheduleKind::Cosine),
            "onecycle" => Ok(ScheduleKind::OneCycle),
            other => Err(format!(
                "'{other}': expected constant, step, cosine or onecycle"
            )),
        }
    }
}

/// A warm-up length: a number of steps, or a fraction of the run's steps.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Warmup {
    #[default]
    None,
    Steps(u64),
    Fraction(f64),
}

impl std::fmt::Display for Warmup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Warmup::None => f.write_str("0"),
            Warmup::Steps(n) => write!(f, "{n}"),
            Warmup::Fraction(x) => write!(f, "{x}"),
        }
    }
}

impl std::str::FromStr for Warmup {
    type Err = String;
    /// `0`, a whole number of steps (`500`), or a fraction of the run below 1 (`0.1`).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(n) = s.parse::<u64>() {
            return Ok(if n == 0 {
                Warmup::None
            } else {
                Warmup::Steps(n)
            });
        }
        match s.parse::<f64>() {
            Ok(x) if x > 0.0 && x < 1.0 => Ok(Warmup::Fraction(x)),
            _ => Err(format!(
                "'{s}': expected a number of steps (e.g. 500) or a fraction of the run in (0, 1) (e.g. 0.1)"
            )),
        }
    }
}

impl Warmup {
    /// Its length in steps, for a run of `total` steps.
    pub fn steps(self, total: u64) -> u64 {
        match self {
            Warmup::None => 0,
            Warmup::Steps(n) => n.min(total),
            Warmup::Fraction(x) => ((x * total as f64).round() as u64).min(total),
        }
    }
}

/// How the learning rate moves over a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    pub kind: ScheduleKind,
    /// `step`: the factor per epoch, in (0, 1].
    pub decay: f32,
    pub warmup: Warmup,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            kind: ScheduleKind::Constant,
            decay: 1.0,
            warmup: Warmup::None,
        }
    }
}

impl Schedule {
    /// The learning rate of global step `t` (0-based) in a run of `total` steps of which
    /// `steps_per_epoch` make an epoch, for the base (or, for one-cycle, maximum) rate `lr`.
    pub fn lr(&self, lr: f32, t: u64, total: u64, steps_per_epoch: u64) -> f32 {
        let base = lr as f64;
        let total = total.max(1);
        let t = t.min(total - 1);
        let w = self.warmup.steps(total);
        if self.kind == ScheduleKind::OneCycle {
            let pct_start = match self.warmup {
                Warmup::None => 0.3,
                Warmup::Fraction(x) => x,
                Warmup::Steps(_) => w as f64 / total as f64,
            };
            return one_cycle(base, t, total, pct_start) as f32;
        }
        if t < w {
            return (base * (t + 1) as f64 / w as f64) as f32;
        }
        let (t2, span) = (t - w, (total - w).max(1));
        let value = match self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step => {
                base * (self.decay as f64).powi((t / steps_per_epoch.max(1)) as i32)
            }
            ScheduleKind::Cosine => {
                base * (1.0 + (std::f64::consts::PI * t2 as f64 / span as f64).cos()) / 2.0
            }
            ScheduleKind::OneCycle => unreachable!(),
        };
        value as f32
    }

    /// For the training header: e.g. "cosine, warm-up 500 steps".
    pub fn describe(&self, total: u64) -> String {
        let mut text = match self.kind {
            ScheduleKind::Step if self.decay != 1.0 => format!("step (x{} per epoch)", self.decay),
            ScheduleKind::Step => "step (x1 per epoch: constant)".to_string(),
            kind => kind.to_string(),
        };
        let w = self.warmup.steps(total);
        if self.kind == ScheduleKind::OneCycle {
            let rise = if w > 0 {
                w
            } else {
                (0.3 * total as f64) as u64
            };
            text += &format!(", rising over {rise} of {total} steps");
        } else if w > 0 {
            text += &format!(", warm-up {w} of {total} steps");
        }
        text
    }
}

/// `torch.optim.lr_scheduler.OneCycleLR`'s two-phase cosine schedule (div_factor 25,
/// final_div_factor 1e4), rising over the first `pct_start` of the `total` steps.
fn one_cycle(max_lr: f64, t: u64, total: u64, pct_start: f64) -> f64 {
    let initial = max_lr / 25.0;
    let min = initial / 1e4;
    let phases = [
        (pct_start * total as f64 - 1.0, initial, max_lr),
        (total as f64 - 1.0, max_lr, min),
    ];
    let cos_anneal = |start: f64, end: f64, pct: f64| {
        end + (start - end) / 2.0 * ((std::f64::consts::PI * pct).cos() + 1.0)
    };
    let step = t as f64;
    let mut start_step = 0.0;
    for (i, &(end_step, from, to)) in phases.iter().enumerate() {
        if step <= end_step || i == phases.len() - 1 {
            let pct = (step - start_step) / (end_step - start_step);
            return cos_anneal(from, to, pct);
        }
        start_step = end_step;
    }
    unreachable!("the last phase always returns")
}
