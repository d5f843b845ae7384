//! Whole networks: the reference's gradients against finite differences, its SGD steps against
//! PyTorch, and training trajectories on every executor against the reference, written once.

mod common;

use common::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use wgcnn::data::{Dataset, Normalization, Split};
use wgcnn::exec::fast::FastCpu;
use wgcnn::exec::gpu::GpuExecutor;
use wgcnn::exec::reference::{network_backward, network_forward, CpuReference};
use wgcnn::exec::{Executor, Optimizer, OptimizerKind};
use wgcnn::network::{Network, Shape};
use wgcnn::ops::*;
use wgcnn::spec::NetSpec;

#[test]
fn fixtures_record_the_torch_version_that_made_them() {
    let f = Fixture::load("layers.safetensors");
    assert!(
        f.metadata("torch_version").starts_with('2'),
        "{}",
        f.metadata("torch_version")
    );
}

/// The whole network, composed: a small net with every kind of layer, checked in f64 end to end.
#[test]
fn whole_network_gradients_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let specs = [
        "conv3k3s2p1-tanh-avgpool2s1-conv2k2-relu-maxpool2-dense5-sigmoid-dense4",
        "conv2k3nb-sigmoid-dropout0.4-dense6-tanh-dense4-bce",
        "conv4k2s2-maxpool2s1-dense4nb-mse",
        // Batch normalization in both kinds (over channels and over features), first and after
        // a ReLU; batch statistics make every sample's loss depend on the others.
        "bn-conv3k3nb-bn-relu-conv2k2-bn-tanh-dense5-bn-sigmoid-dense4",
    ];
    let input = Shape {
        channels: 1,
        height: 9,
        width: 9,
    };
    for text in specs {
        let spec = NetSpec::parse(text).unwrap();
        let net = Network::new(&spec, input).unwrap();
        let batch = 2;
        let params: Vec<Vec<f64>> = net
            .params
            .iter()
            .map(|p| random_f64(&mut rng, p.len()))
            .collect();
        let images = random_f64(&mut rng, batch * input.len());
        let labels = [1u8, 3];
        let dropout = Some((11, 2));
        let total_loss = |params: &[Vec<f64>]| {
            let acts = network_forward(&net, params, &[], images.clone(), batch, dropout);
            loss_forward(net.loss(), net.classes(), acts.last().unwrap(), &labels)
        };
        let acts = network_forward(&net, &params, &[], images.clone(), batch, dropout);
        let d_logits = loss_backward(net.loss(), net.classes(), acts.last().unwrap(), &labels);
        let grads = network_backward(&net, &params, &acts, d_logits, batch, dropout);
        for (i, info) in net.params.iter().enumerate() {
            check_gradient(
                &format!("{text}: {}", info.name),
                &params[i],
                &grads[i],
                |v| {
                    let mut p = params.clone();
                    p[i] = v.to_vec();
                    total_loss(&p)
                },
            );
        }
    }
}

/// Two SGD steps (momentum 0.9) of whole presets: losses, first-step gradients of every
/// parameter, and every parameter after both steps.
///
/// Tolerance: as for layers. After two steps, parameters differ from PyTorch's by lr times the
/// gradient differences (at most ~1e-5 with lr <= 0.5), well inside 5e-5.
#[test]
fn training_steps_match_pytorch() {
    let f = Fixture::load("steps.safetensors");
    for name in ["tanh-avgpool", "dropout", "relu-maxpool-bce"] {
        let spec = NetSpec::parse(&f.metadata(&format!("{name}.spec"))).unwrap();
        let net = Network::new(
            &spec,
            Shape {
                channels: 1,
                height: 28,
                width: 28,
            },
        )
        .unwrap();
        let hyper = f.f32(&format!("{name}.hyper"));
        let sgd = Optimizer::sgd(hyper[0], hyper[1]);
        let seed = hyper[2] as u64;
        let pixels = f.u8(&format!("{name}.pixels"));
        let labels = f.u8(&format!("{name}.labels"));
        let batch = labels.len();
        let data = Dataset {
            images: pixels,
            labels,
            source: "fixture".into(),
        };
        let init: Vec<Vec<f32>> = net
            .params
            .iter()
            .map(|p| f.f32(&format!("{name}.init.{}", p.name)))
            .collect();
        let mut exec = CpuReference::new(
            net.clone(),
            init,
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            seed,
        );

        // Gradients of the first step, before any update.
        let order: Vec<u32> = (0..batch as u32).collect();
        let (images, labels) = wgcnn::ops::gather_batch(&data, &order, Normalization::UNIT);
        let (_, _, grads, _) = exec.forward_backward(images, &labels, 0);
        for (p, g) in net.params.iter().zip(&grads) {
            close_torch(
                &format!("{name} step 0 gradient {}", p.name),
                g,
                &f.f32(&format!("{name}.grad.{}", p.name)),
            );
        }

        let expected_losses = f.f32(&format!("{name}.losses"));
        exec.begin_epoch(&order).unwrap();
        for (step, &expected) in expected_losses.iter().enumerate() {
            exec.train_step(0, batch, step as u32, sgd).unwrap();
            let m = exec.take_train_metrics().unwrap();
            close_torch(
                &format!("{name} loss of step {step}"),
                &[m.mean_loss() as f32],
                &[expected],
            );
        }
        let after = exec.parameters().unwrap();
        for (p, value) in net.params.iter().zip(&after) {
            close_torch(
                &format!("{name} {} after 2 steps", p.name),
                value,
                &f.f32(&format!("{name}.after.{}", p.name)),
            );
        }
    }
}

/// Every executor of this machine for a network: the fast CPU executor and, where there is one,
/// the GPU (limited by `WGCNN_TEST_EXECUTORS`).
fn executors(
    net: &Network,
    params: &[Vec<f32>],
    data: &Dataset,
    seed: u64,
    batch: usize,
) -> Vec<(String, Box<dyn Executor>)> {
    let mut all: Vec<(String, Box<dyn Executor>)> = Vec::new();
    if executor_wanted("fast") {
        let fast = FastCpu::new(
            net.clone(),
            params.to_vec(),
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            seed,
            batch,
        );
        all.push((fast.device(), Box::new(fast)));
    }
    if let Some(d) = device() {
        let gpu = GpuExecutor::new(
            d.gpu.clone(),
            d.kernels.clone(),
            net.clone(),
            params,
            data,
            data,
            Normalization::UNIT,
            seed,
            batch,
        )
        .unwrap();
        all.push((gpu.device(), Box::new(gpu)));
    }
    all
}

/// Several SGD steps of whole networks from identical weights on the same batches, on every
/// executor and on the CPU reference: the loss, the accuracy count and every parameter agree after
/// every step, and so does the evaluation that follows.
#[test]
fn training_trajectories_match_the_reference_on_every_executor() {
    let data = mnist_subset(52);
    let adam = |kind, lr, (beta1, beta2), weight_decay| Optimizer {
        kind,
        lr,
        beta1,
        beta2,
        weight_decay,
        ..Optimizer::default()
    };
    // Adam (the `fast` preset's betas), AdamW with weight decay, SGD with L2 weight decay.
    let optimizers = [
        (
            "relu-maxpool",
            8,
            adam(OptimizerKind::Adam, 0.01, (0.7, 0.9), 0.0),
        ),
        (
            "conv4k3-relu-conv6k3-relu-maxpool2-dropout0.25-dense12-relu-dropout0.5-dense10",
            8,
            adam(OptimizerKind::AdamW, 0.005, (0.9, 0.999), 0.05),
        ),
        (
            "two-conv",
            6,
            Optimizer {
                weight_decay: 5e-4,
                ..Optimizer::sgd(0.05, 0.9)
            },
        ),
        (
            // A wide dense layer (the fast CPU's fused backward pass and SGD step) with decay.
            "conv4k3-sigmoid-dropout0.3-dense20-relu-dropout0.5-dense10",
            7,
            Optimizer {
                weight_decay: 1e-3,
                ..Optimizer::sgd(0.05, 0.9)
            },
        ),
        (
            "sigmoid-bce",
            13,
            adam(OptimizerKind::Adam, 0.01, (0.9, 0.999), 1e-3),
        ),
    ];
    // (spec or preset, batch, lr): SGD with momentum 0.9
    let networks = [
        ("tanh-avgpool", 8, 0.05), // average pooling
        ("dropout", 8, 0.05),      // dropout: the same masks everywhere
        ("relu-maxpool", 8, 0.05), // max pooling after a ReLU
        ("sigmoid-bce", 5, 0.5), // sigmoid + binary cross-entropy; 52 % 5 != 0: a short last batch
        ("sigmoid-bce", 13, 0.5), // 52 = 4 x 13
        ("two-conv", 6, 0.05),   // stacked convolutions with several channels
        // ReLUs fused: applied by the convolution and dense layer before them, and their masks by
        // the convolution, max pooling and dense layer after them (GPU and fast CPU alike).
        (
            "conv6k3-relu-conv12k3-relu-maxpool2-dense40-relu-dense10",
            8,
            0.05,
        ),
        // Winograd on the fast CPU executor, padding 1 and 2.
        (
            "conv4k3-relu-conv8k3p1-relu-conv6k3p2-relu-maxpool2-dense16-relu-dense10",
            8,
            0.05,
        ),
        // Dropouts fused on the GPU: applied by the max pooling and by the dense layer (after its
        // ReLU) before them, and their backward passes (with that ReLU's mask) by the dense layers
        // after them, through a flatten; as in the default preset.
        (
            "conv4k3-relu-conv6k3-relu-maxpool2-dropout0.25-dense12-relu-dropout0.5-dense10",
            8,
            0.05,
        ),
        // ... by a convolution (forward epilogue and input gradient) and an average pooling.
        (
            "conv4k3-dropout0.3-conv5k3-relu-avgpool2-dropout0.2-dense10",
            6,
            0.05,
        ),
        // tanh and sigmoid before convolutions and (through a flatten) a dense layer, whose
        // backward passes the fast CPU folds into those layers' input gradients; a padded first
        // layer on one channel (the fast CPU's direct convolution).
        (
            "conv4k3p1-tanh-conv6k3-sigmoid-conv5k3p1-tanh-dense10",
            6,
            0.05,
        ),
        // Dropouts whose backward passes (with the activation before them) the fast CPU folds
        // into the input gradient of the dense layer after them: through a flatten into a wide
        // layer (SGEMM), and directly into a narrow one.
        (
            "conv4k3-sigmoid-dropout0.3-dense20-relu-dropout0.5-dense10",
            7,
            0.05,
        ),
        // Stride, padding, no bias, overlapping max pooling, MSE; batch 7 and batch 1.
        (
            "conv4k3s2p1nb-relu-maxpool3s2-dense12-sigmoid-dense10-mse",
            7,
            0.5,
        ),
        (
            "conv4k3s2p1nb-relu-maxpool3s2-dense12-sigmoid-dense10-mse",
            1,
            0.5,
        ),
        // Batch normalization over channels and over features, between layers and their ReLUs
        // (the running statistics are compared too); and first, on the input, with batch 1
        // (statistics over one image's pixels) and with a short last batch.
        (
            "conv4k3nb-bn-relu-conv6k3-bn-relu-maxpool2-dense12-bn-relu-dense10",
            8,
            0.05,
        ),
        ("bn-conv4k3-relu-maxpool2-dense10", 1, 0.05),
        ("bn-conv4k3-relu-maxpool2-bn-dense10", 5, 0.05),
    ];
    let networks = networks
        .into_iter()
        .map(|(name, batch, lr)| (name, batch, Optimizer::sgd(lr, 0.9)))
        .chain(optimizers);
    for (name, batch, opt) in networks {
        let text = wgcnn::spec::preset(name)
            .map(|p| p.spec.to_string())
            .unwrap_or_else(|_| name.to_string());
        let net = Network::new(
            &NetSpec::parse(&text).unwrap(),
            Shape {
                channels: 1,
                height: 28,
                width: 28,
            },
        )
        .unwrap();
        let seed = 5;
        let params = net.init_params(seed);
        for (device, mut exec) in executors(&net, &params, &data, seed, batch) {
            let mut reference = CpuReference::new(
                net.clone(),
                params.clone(),
                data.clone(),
                data.clone(),
                Normalization::UNIT,
                seed,
            );
            let order: Vec<u32> = (0..data.len() as u32).rev().collect();
            reference.begin_epoch(&order).unwrap();
            exec.begin_epoch(&order).unwrap();
            let steps = data.len().div_ceil(batch).min(13);
            assert!(steps >= 4);
            for step in 0..steps {
                let start = step * batch;
                let len = batch.min(data.len() - start);
                reference.train_step(start, len, step as u32, opt).unwrap();
                exec.train_step(start, len, step as u32, opt).unwrap();
                let (r, e) = (
                    reference.take_train_metrics().unwrap(),
                    exec.take_train_metrics().unwrap(),
                );
                let tag = format!(
                    "{name} (batch {batch}, {}) on {device}: step {step}",
                    opt.kind
                );
                assert_eq!(
                    (r.count, r.correct),
                    (e.count, e.correct),
                    "{tag}: count and correct"
                );
                // Differences start at a few ULP and are carried along by training; after 13
                // steps of lr <= 0.5 with momentum 0.9 they stay below 1e-4 relative in the loss
                // and 1e-3 in the parameters (observed ~1e-6). Adam divides each gradient by its
                // running magnitude, so a gradient near 0 whose last bits differ (another
                // summation order) can move its weight by up to lr the other way: its parameters
                // are held to lr / 2 (a wiring mistake, such as a wrong step count or moment
                // buffer, moves every weight by about lr); its update rule is checked tightly
                // against PyTorch in tests/ops/adam.rs.
                close_tol(
                    &format!("{tag} loss"),
                    &[e.mean_loss() as f32],
                    &[r.mean_loss() as f32],
                    (1e-5, 1e-4),
                );
                let params_tol = match opt.kind {
                    OptimizerKind::Sgd => (2e-5, 1e-3),
                    _ => (opt.lr / 2.0, 1e-3),
                };
                let (pr, pe) = (reference.parameters().unwrap(), exec.parameters().unwrap());
                for (info, (r, e)) in net.params.iter().zip(pr.iter().zip(&pe)) {
                    close_tol(&format!("{tag} {}", info.name), e, r, params_tol);
                }
                let (br, be) = (reference.buffers().unwrap(), exec.buffers().unwrap());
                for (info, (r, e)) in net.buffers.iter().zip(br.iter().zip(&be)) {
                    close_tol(&format!("{tag} {}", info.name), e, r, params_tol);
                }
            }
            let (r, e) = (
                reference.evaluate(Split::Test).unwrap(),
                exec.evaluate(Split::Test).unwrap(),
            );
            assert_eq!(
                r.correct, e.correct,
                "{name} on {device}: evaluation correct count"
            );
            close_tol(
                &format!("{name} on {device}: evaluation loss"),
                &[e.mean_loss() as f32],
                &[r.mean_loss() as f32],
                (1e-5, 1e-4),
            );
            assert_eq!(exec.test_logits().unwrap().len(), data.len() * 10);
        }
    }
}

/// Training with augmentation: every executor draws the same transforms (GPU: the augmented
/// gather kernel; CPU: the reference's function), so the trajectories agree as without it; and
/// evaluation never augments: its result is the same with augmentation on or off.
#[test]
fn augmented_training_matches_the_reference_on_every_executor() {
    let data = mnist_subset(40);
    let net = Network::new(
        &NetSpec::parse("conv4k3-bn-relu-maxpool2-dense10").unwrap(),
        Shape {
            channels: 1,
            height: 28,
            width: 28,
        },
    )
    .unwrap();
    let (seed, batch) = (3, 8);
    let params = net.init_params(seed);
    let augment = wgcnn::ops::Augment {
        flip: true,
        ..wgcnn::ops::Augment::DEFAULT
    };
    let opt = Optimizer::sgd(0.05, 0.9);
    for (device, mut exec) in executors(&net, &params, &data, seed, batch) {
        let mut reference = CpuReference::new(
            net.clone(),
            params.clone(),
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            seed,
        );
        let order: Vec<u32> = (0..data.len() as u32).collect();
        for e in [&mut reference as &mut dyn Executor, exec.as_mut()] {
            e.begin_epoch(&order).unwrap();
            e.set_augment(Some(augment)).unwrap();
        }
        let mut plain = CpuReference::new(
            net.clone(),
            params.clone(),
            data.clone(),
            data.clone(),
            Normalization::UNIT,
            seed,
        );
        plain.begin_epoch(&order).unwrap();
        for step in 0..5 {
            let start = step * batch;
            reference
                .train_step(start, batch, step as u32, opt)
                .unwrap();
            exec.train_step(start, batch, step as u32, opt).unwrap();
            plain.train_step(start, batch, step as u32, opt).unwrap();
            let (r, e, p) = (
                reference.take_train_metrics().unwrap(),
                exec.take_train_metrics().unwrap(),
                plain.take_train_metrics().unwrap(),
            );
            let tag = format!("augmented step {step} on {device}");
            close_tol(
                &format!("{tag} loss"),
                &[e.mean_loss() as f32],
                &[r.mean_loss() as f32],
                (1e-5, 1e-4),
            );
            assert_ne!(
                r.mean_loss(),
                p.mean_loss(),
                "{tag}: augmentation changed nothing"
            );
            let (pr, pe) = (reference.parameters().unwrap(), exec.parameters().unwrap());
            for (info, (r, e)) in net.params.iter().zip(pr.iter().zip(&pe)) {
                close_tol(&format!("{tag} {}", info.name), e, r, (2e-5, 1e-3));
            }
        }
        let on = exec.evaluate(Split::Test).unwrap();
        exec.set_augment(None).unwrap();
        let off = exec.evaluate(Split::Test).unwrap();
        assert_eq!(on, off, "{device}: evaluation must not augment");
        let r = reference.evaluate(Split::Test).unwrap();
        assert_eq!(r.correct, on.correct, "{device}: evaluation correct count");
    }
}

/// The fast CPU executor's training does not depend on how many threads run it: every sum it
/// splits across tasks is split the same way whatever the number of cores (the weight
/// gradients' batch chunks, the dense forward pass's blocks of inputs), so one, two and three
/// threads give the same parameters bit for bit.
#[test]
fn fast_cpu_training_is_the_same_on_any_number_of_threads() {
    if !executor_wanted("fast") {
        return;
    }
    let data = mnist_subset(40);
    // Wide dense layers (split by inputs forward, by columns backward), Winograd, direct and
    // im2col convolutions, a narrow classifier.
    let spec = "conv4k3-sigmoid-conv8k3p1-relu-maxpool2-dense40-tanh-dense20-relu-dense10";
    let net = Network::new(
        &NetSpec::parse(spec).unwrap(),
        Shape {
            channels: 1,
            height: 28,
            width: 28,
        },
    )
    .unwrap();
    let params = net.init_params(3);
    let train = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut exec = FastCpu::new(
                net.clone(),
                params.clone(),
                data.clone(),
                data.clone(),
                Normalization::UNIT,
                3,
                16,
            );
            let order: Vec<u32> = (0..data.len() as u32).collect();
            exec.begin_epoch(&order).unwrap();
            for step in 0..3 {
                let opt = Optimizer::sgd(0.05, 0.9);
                exec.train_step(step * 13, 13, step as u32, opt).unwrap();
            }
            exec.parameters().unwrap()
        })
    };
    let one = train(1);
    for threads in [2, 3] {
        let many = train(threads);
        for (i, (a, b)) in one.iter().zip(&many).enumerate() {
            let same = a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(
                same,
                "parameter {i} differs between 1 and {threads} threads"
            );
        }
    }
}
