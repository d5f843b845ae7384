//! Adam and AdamW: the reference against torch.optim (tests/fixtures/make_optim_fixtures.py), the
//! GPU against the reference, and the learning-rate schedules against torch.optim.lr_scheduler.
//! (The fast CPU executor runs the reference's update in pieces; whole trajectories with each
//! optimizer on every executor are in tests/network.rs.)

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::exec::{Optimizer, OptimizerKind};
use wgcnn::schedule::{Schedule, ScheduleKind, Warmup};

use crate::common::*;

fn optimizer(hyper: &[f32]) -> Optimizer {
    Optimizer {
        kind: if hyper[5] == 1.0 {
            OptimizerKind::AdamW
        } else {
            OptimizerKind::Adam
        },
        lr: hyper[0],
        beta1: hyper[1],
        beta2: hyper[2],
        eps: hyper[3],
        weight_decay: hyper[4],
        ..Optimizer::default()
    }
}

/// Six steps of torch.optim.Adam / AdamW (single-tensor path) on gradients of mixed scales, some
/// near 0. Tolerance: the step's scalars are PyTorch's (f64, rounded to f32); the element-wise
/// arithmetic is the same but PyTorch's vectorised lerp uses a fused multiply-add: a few ULP of
/// each quantity, and a parameter moves by at most lr a step, so 1e-6 absolute and 1e-5 relative.
#[test]
fn adam_and_adamw_match_pytorch() {
    let f = Fixture::load("optim.safetensors");
    for case in ["adam", "adam_l2", "adamw", "adam_fast"] {
        let opt = optimizer(&f.f32(&format!("{case}.hyper")));
        let mut p = f.f32(&format!("{case}.param0"));
        let n = p.len();
        let grads = f.f32(&format!("{case}.grads"));
        let expected = f.f32(&format!("{case}.params"));
        let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
        for (t, (g, want)) in grads.chunks(n).zip(expected.chunks(n)).enumerate() {
            opt.update(t as u64 + 1, &mut p, g, &mut m, &mut v);
            close_tol(&format!("{case} step {}", t + 1), &p, want, (1e-6, 1e-5));
        }
        close_tol(
            &format!("{case} exp_avg"),
            &m,
            &f.f32(&format!("{case}.exp_avg")),
            (1e-9, 1e-5),
        );
        close_tol(
            &format!("{case} exp_avg_sq"),
            &v,
            &f.f32(&format!("{case}.exp_avg_sq")),
            (1e-12, 1e-5),
        );
    }
}

/// The GPU's adam_update against the reference, three steps of each variant. The same f32
/// arithmetic in the same order, except WGSL's sqrt and division (a few ULP, not correctly
/// rounded everywhere): TRANSCENDENTAL.
#[test]
fn adam_on_the_gpu_matches_the_reference() {
    let mut rng = ChaCha8Rng::seed_from_u64(21);
    for (grid, ops) in gpu_ops() {
        for (kind, weight_decay, betas, n) in [
            (OptimizerKind::Adam, 0.0, (0.9, 0.999), 1000),
            (OptimizerKind::Adam, 0.01, (0.7, 0.9), 257),
            (OptimizerKind::AdamW, 0.05, (0.9, 0.999), 63),
        ] {
            let opt = Optimizer {
                kind,
                lr: 0.003,
                beta1: betas.0,
                beta2: betas.1,
                weight_decay,
                ..Optimizer::default()
            };
            let mut p = random_scaled(&mut rng, n, 1.0);
            let (mut m, mut v) = (vec![0.0; n], vec![0.0; n]);
            let (mut p_gpu, mut m_gpu, mut v_gpu) = (p.clone(), m.clone(), v.clone());
            for t in 1..=3 {
                let g = random_scaled(&mut rng, n, 0.1);
                (p_gpu, m_gpu, v_gpu) = ops
                    .adam(&opt.adam_step(t), &p_gpu, &g, &m_gpu, &v_gpu)
                    .unwrap();
                opt.update(t, &mut p, &g, &mut m, &mut v);
                let tag = format!("{kind} wd {weight_decay} n {n} step {t} ({grid})");
                close_tol(&format!("{tag} param"), &p_gpu, &p, TRANSCENDENTAL);
                close_tol(&format!("{tag} exp_avg"), &m_gpu, &m, LINEAR);
                close_tol(&format!("{tag} exp_avg_sq"), &v_gpu, &v, LINEAR);
            }
        }
    }
}

/// Every step's learning rate against torch.optim.lr_scheduler (get_last_lr() before each step):
/// f64 formulas rounded to f32, and CosineAnnealingLR's recursive form drifts from the closed
/// form by ~1e-15 relative: 1e-6 relative.
#[test]
fn schedules_match_pytorch() {
    let f = Fixture::load("optim.safetensors");
    let cases = [
        ("cosine", ScheduleKind::Cosine, Warmup::None),
        ("onecycle", ScheduleKind::OneCycle, Warmup::None),
        ("onecycle_02", ScheduleKind::OneCycle, Warmup::Fraction(0.2)),
        ("step", ScheduleKind::Step, Warmup::None),
    ];
    for (name, kind, warmup) in cases {
        let config = f.f64(&format!("sched.{name}.config"));
        let expected = f.f64(&format!("sched.{name}"));
        let (lr, total) = (config[0] as f32, config[1] as u64);
        let (decay, per_epoch) = if kind == ScheduleKind::Step {
            (config[2] as f32, config[3] as u64)
        } else {
            (1.0, total)
        };
        let schedule = Schedule {
            kind,
            decay,
            warmup,
        };
        let ours: Vec<f32> = (0..total)
            .map(|t| schedule.lr(lr, t, total, per_epoch))
            .collect();
        let theirs: Vec<f32> = expected.iter().map(|&v| v as f32).collect();
        close_tol(&format!("schedule {name}"), &ours, &theirs, (1e-12, 1e-6));
    }
}

/// Warm-up (LinearLR(start_factor = 1 / W, total_iters = W - 1) before the schedule): lr (t+1)/W
/// for the first W steps, then the schedule from its start over the remaining steps.
#[test]
fn warmup_ramps_linearly_then_hands_over() {
    let (lr, total, w) = (0.1f32, 100u64, 10u64);
    for kind in [ScheduleKind::Constant, ScheduleKind::Cosine] {
        let s = Schedule {
            kind,
            decay: 1.0,
            warmup: Warmup::Steps(w),
        };
        for t in 0..w {
            let want = (lr as f64 * (t + 1) as f64 / w as f64) as f32;
            assert_eq!(s.lr(lr, t, total, total), want, "{kind} warm-up step {t}");
        }
        assert_eq!(
            s.lr(lr, w, total, total),
            lr,
            "{kind} first step after warm-up"
        );
    }
    let cosine = Schedule {
        kind: ScheduleKind::Cosine,
        decay: 1.0,
        warmup: Warmup::Fraction(0.1),
    };
    // 90 steps of cosine after 10 of warm-up: half-way down at step 10 + 45
    let mid = cosine.lr(lr, 55, total, total);
    assert!((mid - lr / 2.0).abs() < 1e-7, "{mid}");
}
