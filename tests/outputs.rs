//! What a user keeps from training: checkpoints, resuming, evaluation, predictions on their own
//! pictures, plots, metrics files, help and errors.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{text, wgcnn, FASHION};
use image::{GrayImage, Luma};
use wgcnn::checkpoint::{self, CheckpointInfo, OptimizerState};
use wgcnn::data::{load_split, Dataset, Normalization, Split};
use wgcnn::exec::reference::CpuReference;
use wgcnn::exec::{Executor, Optimizer};
use wgcnn::network::{Network, Shape};
use wgcnn::schedule::{Schedule, ScheduleKind};
use wgcnn::spec::NetSpec;

const MNIST: Shape = Shape {
    channels: 1,
    height: 28,
    width: 28,
};

fn mnist(split: Split, n: usize) -> Dataset {
    let mut set = load_split(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/mnist"),
        split,
    )
    .unwrap();
    set.truncate(n);
    set
}

fn info(spec: &NetSpec, epoch: usize) -> CheckpointInfo {
    CheckpointInfo {
        spec: spec.clone(),
        seed: 4,
        epoch,
        epochs: 3,
        step: 10,
        batch_size: 16,
        optimizer: Optimizer::sgd(0.05, 0.9),
        schedule: Schedule {
            kind: ScheduleKind::Step,
            decay: 0.8,
            ..Schedule::default()
        },
        normalization: Normalization::UNIT,
        classes: wgcnn::data::digit_classes(),
        augment: None,
    }
}

/// A relu-maxpool network trained for a few steps on the CPU reference.
fn trained(spec_text: &str) -> (Network, CpuReference) {
    let spec = NetSpec::parse(spec_text).unwrap();
    let net = Network::new(&spec, MNIST).unwrap();
    let (train, test) = (mnist(Split::Train, 160), mnist(Split::Test, 100));
    let mut exec = CpuReference::new(
        net.clone(),
        net.init_params(4),
        train,
        test,
        Normalization::UNIT,
        4,
    );
    exec.begin_epoch(&(0..160).collect::<Vec<u32>>()).unwrap();
    for step in 0..10 {
        exec.train_step(step * 16, 16, step as u32, Optimizer::sgd(0.05, 0.9))
            .unwrap();
    }
    (net, exec)
}

#[test]
fn a_saved_checkpoint_loads_and_predicts_bit_identically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    for spec_text in [
        "conv8k3-relu-maxpool2-dense10",
        "conv4k3s2p1nb-tanh-dropout0.3-dense12-sigmoid-dense10-bce",
        // Batch normalization: its running statistics travel with the weights.
        "conv4k3nb-bn-relu-maxpool2-dense12-bn-relu-dense10",
    ] {
        let (net, mut exec) = trained(spec_text);
        let before = exec.test_logits().unwrap();
        let (params, momentum) = (exec.parameters().unwrap(), exec.momentum().unwrap());
        let running = exec.buffers().unwrap();
        assert_eq!(running.len(), net.buffers.len());
        let state = OptimizerState {
            first: momentum.clone(),
            second: None,
        };
        let saved = info(&net.spec, 1);
        checkpoint::save(&path, &net, &params, &running, Some(&state), &saved).unwrap();

        let ck = checkpoint::load(&path, MNIST, None).unwrap();
        assert_eq!(ck.info, info(&net.spec, 1));
        assert_eq!(ck.network, net);
        assert_eq!(ck.params, params);
        assert_eq!(ck.buffers, running);
        assert_eq!(ck.state, Some(state));
        // PyTorch's batch counter: an i64 scalar per batch normalization, the steps taken.
        let bytes = std::fs::read(&path).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for l in net.layers.iter().filter(|l| l.running.is_some()) {
            let t = st
                .tensor(&format!("{}.num_batches_tracked", l.index))
                .unwrap();
            assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::I64, &[][..]));
            assert_eq!(t.data(), &(saved.step as i64).to_le_bytes()[..]);
        }
        let mut again = CpuReference::new(
            ck.network,
            ck.params,
            mnist(Split::Train, 1),
            mnist(Split::Test, 100),
            Normalization::UNIT,
            4,
        );
        again.set_buffers(&ck.buffers).unwrap();
        let after = again.test_logits().unwrap();
        assert_eq!(
            before.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            after.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            "{spec_text}"
        );
    }
}

/// Rewrite a checkpoint's tensors through `edit` (name -> (shape, values)), keeping its metadata.
fn rewrite(path: &Path, out: &Path, edit: impl Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name.to_string(), t.shape().to_vec(), t.data().to_vec()))
        .collect();
    // Tensors keep their type (batch normalization's counter is i64); new ones are f32.
    let dtypes: std::collections::HashMap<String, safetensors::Dtype> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| (name.to_string(), t.dtype()))
        .collect();
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(
                    dtypes.get(n).copied().unwrap_or(safetensors::Dtype::F32),
                    shape.clone(),
                    data,
                )
                .unwrap(),
            )
        })
        .collect();
    let out_bytes = safetensors::serialize(views, header.metadata().clone()).unwrap();
    std::fs::write(out, out_bytes).unwrap();
}

/// Rewrite a checkpoint's metadata through `edit`, keeping its tensors.
fn rewrite_metadata(
    path: &Path,
    out: &Path,
    edit: impl Fn(&mut std::collections::HashMap<String, String>),
) {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    edit(&mut meta);
    let views: Vec<_> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n.to_string(), t))
        .collect();
    std::fs::write(out, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
}

/// A model names its own classes: saved with it, loaded back, the digits for checkpoints written
/// before names were recorded, and malformed names refused naming the file and the field.
#[test]
fn checkpoints_keep_their_class_names_and_refuse_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (net, mut exec) = trained("conv8k3-relu-maxpool2-dense10");
    let params = exec.parameters().unwrap();
    let named = CheckpointInfo {
        classes: FASHION.map(String::from).to_vec(),
        ..info(&net.spec, 1)
    };
    let path = dir.path().join("fashion.safetensors");
    checkpoint::save(&path, &net, &params, &[], None, &named).unwrap();
    let ck = checkpoint::load(&path, MNIST, None).unwrap();
    assert_eq!(ck.info, named);
    // Stored as a JSON list of strings, which other tools read as they are.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let stored: Vec<String> =
        serde_json::from_str(&header.metadata().as_ref().unwrap()["classes"]).unwrap();
    assert_eq!(stored, FASHION);

    // A checkpoint written before class names were recorded: the digits.
    let old = dir.path().join("old.safetensors");
    rewrite_metadata(&path, &old, |m| {
        m.remove("classes");
    });
    let ck = checkpoint::load(&old, MNIST, None).unwrap();
    assert_eq!(ck.info.classes, wgcnn::data::digit_classes());
    assert_eq!(ck.params, params);

    let json = |names: &[&str]| serde_json::to_string(names).unwrap();
    let with = |i: usize, name: &str| {
        let mut names = FASHION;
        names[i] = name;
        json(&names)
    };
    let long = "x".repeat(41);
    for (value, needle) in [
        (
            "\"T-shirt/top\"".to_string(),
            "metadata 'classes' is not a JSON list of strings",
        ),
        (
            "[0,1,2,3,4,5,6,7,8,9]".to_string(),
            "metadata 'classes' is not a JSON list of strings",
        ),
        (
            "[\"T-shirt/top\"".to_string(),
            "metadata 'classes' is not a JSON list of strings",
        ),
        (
            json(&FASHION[..9]),
            "metadata 'classes': names 9 classes; expected 10, one per output",
        ),
        (
            json(&[&FASHION[..], &["Hat"]].concat()),
            "metadata 'classes': names 11 classes; expected 10",
        ),
        (with(3, ""), "metadata 'classes': class 3 has an empty name"),
        (with(3, " \t "), "metadata 'classes': class 3 has an empty name"),
        (
            with(4, "Coat\u{1b}[31m"),
            "metadata 'classes': the name of class 4, \"Coat\\u{1b}[31m\", holds a control character",
        ),
        (
            with(8, "Bag\nShoe"),
            "metadata 'classes': the name of class 8, \"Bag\\nShoe\", holds a control character",
        ),
        (
            with(8, " Bag"),
            "metadata 'classes': the name of class 8, \" Bag\", starts or ends with a space",
        ),
        (
            with(6, "T-shirt/top"),
            "metadata 'classes': classes 0 and 6 are both named \"T-shirt/top\"",
        ),
        (
            with(9, &long),
            "metadata 'classes': the name of class 9 is 41 characters long; expected at most 40",
        ),
    ] {
        let bad = dir.path().join("bad.safetensors");
        rewrite_metadata(&path, &bad, |m| {
            m.insert("classes".into(), value.clone());
        });
        let e = checkpoint::load(&bad, MNIST, None)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("bad.safetensors: {needle}")), "{e}");
        // The commands that read a checkpoint say the same, and do not panic.
        for args in [
            vec!["eval", "--model", bad.to_str().unwrap(), "--limit-test", "5"],
            vec!["predict", "--model", bad.to_str().unwrap(), "x.png"],
            vec!["train", "--resume", bad.to_str().unwrap(), "--limit-train", "5"],
        ] {
            let out = wgcnn(&args);
            let (_, stderr) = text(&out);
            assert!(!out.status.success(), "{args:?}");
            assert!(
                stderr.contains(needle) && !stderr.contains("panicked"),
                "{args:?}: {stderr}"
            );
        }
    }
}

/// Batch normalization's buffers: all needed, a variance never negative, the counter an i64
/// scalar as PyTorch writes it.
#[test]
fn broken_batch_norm_buffers_are_rejected_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let (net, mut exec) = trained("conv4k3-bn-relu-maxpool2-dense10");
    let (params, running) = (exec.parameters().unwrap(), exec.buffers().unwrap());
    checkpoint::save(&good, &net, &params, &running, None, &info(&net.spec, 1)).unwrap();
    let load = |p: &PathBuf| checkpoint::load(p, MNIST, None).map(|_| ());
    load(&good).unwrap();
    type Edit = Box<dyn Fn(&mut Vec<(String, Vec<usize>, Vec<u8>)>)>;
    let cases: [(&str, Edit, &str); 3] = [
        (
            "missing",
            Box::new(|t| t.retain(|(n, _, _)| n != "1.running_var")),
            "no tensor '1.running_var' (shape [4])",
        ),
        (
            "negative",
            Box::new(|t| {
                for (n, _, data) in t.iter_mut() {
                    if n == "1.running_var" {
                        data[8..12].copy_from_slice(&(-0.5f32).to_le_bytes());
                    }
                }
            }),
            "tensor '1.running_var' holds a negative variance at index 2",
        ),
        (
            "counter",
            Box::new(|t| {
                t.retain(|(n, _, _)| n != "1.num_batches_tracked");
                t.push(("1.num_batches_tracked".into(), vec![2], vec![0; 16]));
            }),
            "tensor '1.num_batches_tracked' is I64 of shape [2]; expected an I64 scalar",
        ),
    ];
    for (name, edit, expected) in cases {
        let bad = dir.path().join(format!("{name}.safetensors"));
        rewrite(&good, &bad, edit);
        let e = load(&bad).unwrap_err().to_string();
        assert!(e.contains(expected) && e.contains(name), "{name}: {e}");
    }
}

#[test]
fn broken_checkpoints_are_rejected_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let (net, mut exec) = trained("conv8k3-relu-maxpool2-dense10");
    checkpoint::save(
        &good,
        &net,
        &exec.parameters().unwrap(),
        &[],
        None,
        &info(&net.spec, 1),
    )
    .unwrap();
    let load = |p: &PathBuf| {
        checkpoint::load(p, MNIST, None)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };

    let missing = dir.path().join("missing.safetensors");
    rewrite(&good, &missing, |t| t.retain(|(n, _, _)| n != "4.bias"));
    let e = load(&missing);
    assert!(
        e.contains("no tensor '4.bias' (shape [10])") && e.contains("missing.safetensors"),
        "{e}"
    );

    let wrong = dir.path().join("wrong.safetensors");
    rewrite(&good, &wrong, |t| {
        for (n, shape, data) in t.iter_mut() {
            if n == "0.weight" {
                *shape = vec![8, 1, 9];
                data.truncate(8 * 9 * 4);
            }
        }
    });
    let e = load(&wrong);
    assert!(
        e.contains("tensor '0.weight'")
            && e.contains("has shape [8, 1, 9]; the network needs [8, 1, 3, 3]"),
        "{e}"
    );

    let bytes = std::fs::read(&good).unwrap();
    for cut in [bytes.len() - 10, bytes.len() / 2, 20, 3] {
        let truncated = dir.path().join(format!("cut{cut}.safetensors"));
        std::fs::write(&truncated, &bytes[..cut]).unwrap();
        let e = load(&truncated);
        assert!(
            e.contains("not a valid safetensors checkpoint (truncated or corrupt?)")
                && e.contains(&format!("cut{cut}")),
            "{e}"
        );
    }
    let e = load(&dir.path().join("absent.safetensors"));
    assert!(
        e.contains("absent.safetensors: cannot read the checkpoint"),
        "{e}"
    );

    // A checkpoint for another network, resumed with --model, says which is which.
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--resume",
        good.to_str().unwrap(),
        "--model",
        "dropout",
        "--limit-train",
        "10",
    ]));
    assert!(
        stderr.contains("--model dropout is conv16k3-tanh-dropout0.5-dense10-softmax, but")
            && stderr.contains("holds conv8k3-relu-maxpool2-dense10-softmax"),
        "{stderr}"
    );
}

#[test]
fn resuming_continues_exactly_where_the_run_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    // With a decaying learning rate, which the checkpoint must carry for the resumed epoch.
    let common = [
        "--lr-decay",
        "0.5",
        "--model",
        "conv4k3-tanh-dropout0.3-dense10",
        "--limit-train",
        "200",
        "--limit-test",
        "50",
        "--batch-size",
        "16",
        "--seed",
        "7",
    ];
    // Two epochs straight, against one epoch, then --resume for the second.
    let straight = wgcnn(
        &[
            &["train", "--epochs", "2", "--save", a.to_str().unwrap()][..],
            &common,
        ]
        .concat(),
    );
    assert!(straight.status.success(), "{:?}", text(&straight));
    let first = wgcnn(
        &[
            &["train", "--epochs", "1", "--save", b.to_str().unwrap()][..],
            &common,
        ]
        .concat(),
    );
    assert!(first.status.success(), "{:?}", text(&first));
    let resumed = wgcnn(&[
        "train",
        "--resume",
        b.to_str().unwrap(),
        "--save",
        b.to_str().unwrap(),
        "--limit-train",
        "200",
        "--limit-test",
        "50",
    ]);
    let (out, err) = text(&resumed);
    assert!(resumed.status.success(), "{out}\n{err}");
    assert!(
        out.contains("epochs 2..=2") && out.contains("epoch 2/2"),
        "{out}"
    );
    let (ca, cb) = (
        checkpoint::load(&a, MNIST, None).unwrap(),
        checkpoint::load(&b, MNIST, None).unwrap(),
    );
    assert_eq!(cb.info.epoch, 2);
    // Same shuffles, same dropout masks, same momentum: the same weights, bit for bit.
    assert_eq!(ca.params, cb.params);
    assert_eq!(ca.state, cb.state);
    let again = wgcnn(&[
        "train",
        "--resume",
        b.to_str().unwrap(),
        "--epochs",
        "2",
        "--limit-train",
        "200",
    ]);
    assert!(
        text(&again).0.contains("nothing to do"),
        "{:?}",
        text(&again)
    );
}

/// A run planned for three epochs with AdamW and a one-cycle schedule, stopped after the first
/// (--stop-after) and resumed: the schedule, the step count and both moments carry over, and the
/// result is the uninterrupted run's, bit for bit, batch normalization's running statistics too.
#[test]
fn resuming_mid_schedule_with_adamw_equals_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        dir.path().join("a.safetensors"),
        dir.path().join("b.safetensors"),
    );
    let data = ["--limit-train", "200", "--limit-test", "50"];
    let common = [
        &[
            "train",
            "--model",
            "conv4k3-bn-tanh-dropout0.3-dense10",
            "--optimizer",
            "adamw",
            "--weight-decay",
            "0.01",
            "--lr",
            "0.01",
            "--schedule",
            "onecycle",
            "--epochs",
            "3",
            "--batch-size",
            "16",
            "--seed",
            "7",
        ][..],
        &data,
    ]
    .concat();
    let straight = wgcnn(&[&common[..], &["--save", a.to_str().unwrap()]].concat());
    assert!(straight.status.success(), "{:?}", text(&straight));
    let first = wgcnn(
        &[
            &common[..],
            &["--stop-after", "1", "--save", b.to_str().unwrap()],
        ]
        .concat(),
    );
    let (out, err) = text(&first);
    assert!(first.status.success(), "{out}\n{err}");
    assert!(
        out.contains("(stopping after 1)") && !out.contains("epoch 2/3"),
        "{out}"
    );
    let resumed = wgcnn(
        &[
            &[
                "train",
                "--resume",
                b.to_str().unwrap(),
                "--save",
                b.to_str().unwrap(),
            ][..],
            &data,
        ]
        .concat(),
    );
    let (out, err) = text(&resumed);
    assert!(resumed.status.success(), "{out}\n{err}");
    assert!(
        out.contains("epochs 2..=3") && out.contains("optimizer adamw") && out.contains("onecycle"),
        "{out}"
    );
    let (ca, cb) = (
        checkpoint::load(&a, MNIST, None).unwrap(),
        checkpoint::load(&b, MNIST, None).unwrap(),
    );
    assert_eq!(cb.info.epoch, 3);
    assert_eq!(ca.params, cb.params);
    assert_eq!(ca.buffers, cb.buffers);
    assert!(
        ca.buffers[1].iter().all(|&v| v != 1.0),
        "the running variance moved"
    );
    let state = cb.state.as_ref().expect("the optimizer's state is saved");
    assert!(state.second.is_some(), "AdamW saves both moments");
    assert_eq!(ca.state, cb.state);

    // Resumed with another family of optimizer, the saved moments cannot be used: it says so.
    let switched = wgcnn(
        &[
            &[
                "train",
                "--resume",
                a.to_str().unwrap(),
                "--optimizer",
                "sgd",
                "--epochs",
                "4",
            ][..],
            &data,
        ]
        .concat(),
    );
    let (out, err) = text(&switched);
    assert!(switched.status.success(), "{out}\n{err}");
    assert!(
        err.contains("was trained with adamw; sgd starts from zero state"),
        "{err}"
    );
}

#[test]
fn eval_reports_loss_accuracy_and_confusion_and_draws_them() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let plot = dir.path().join("train.png");
    let metrics = dir.path().join("m.jsonl");
    let out = wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "2",
        "--limit-train",
        "1500",
        "--limit-test",
        "300",
        "--save",
        model.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
        "--metrics",
        metrics.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // One JSON object per epoch, with what other tools need.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&metrics)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["epoch"], i + 1);
        for key in [
            "train_loss",
            "train_accuracy",
            "test_loss",
            "test_accuracy",
            "seconds",
            "images_per_second",
        ] {
            assert!(l[key].as_f64().is_some_and(f64::is_finite), "{key} in {l}");
        }
        assert!(l["device"].as_str().unwrap().contains("CPU"));
    }
    let final_accuracy = lines[1]["test_accuracy"].as_f64().unwrap();

    let eval_plot = dir.path().join("eval.png");
    let out = wgcnn(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--limit-test",
        "300",
        "--plot",
        eval_plot.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // The same accuracy as the run reported for its last epoch.
    assert!(
        stdout.contains(&format!("accuracy {:.2}%", 100.0 * final_accuracy)),
        "{stdout}"
    );
    assert!(stdout.contains("confusion matrix"), "{stdout}");
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.trim_end().ends_with('%') && l.trim_start().starts_with(char::is_numeric))
        .collect();
    assert_eq!(rows.len(), 10, "{stdout}");

    for (path, (w, h)) in [(&plot, (1200, 500)), (&eval_plot, (1300, 640))] {
        let img = image::open(path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .to_rgb8();
        assert_eq!(img.dimensions(), (w, h), "{}", path.display());
        let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        let colored = img
            .pixels()
            .filter(|p| p.0[0] != p.0[1] || p.0[1] != p.0[2])
            .count();
        // Not blank: axes, text and curves cover a few percent of the picture, some of it in colour.
        assert!(
            inked > (w * h / 100) as usize && colored > 500,
            "{}: {inked} inked, {colored} coloured",
            path.display()
        );
    }
}

/// A test image as a PNG in another form: scaled by `scale`, inverted or not, pasted at `at` on
/// a canvas of `canvas` size filled with the background.
fn variant(
    pixels: &[u8],
    scale: u32,
    dark_on_light: bool,
    canvas: (u32, u32),
    at: (u32, u32),
) -> GrayImage {
    let digit = GrayImage::from_fn(28, 28, |x, y| {
        let v = pixels[(y * 28 + x) as usize];
        Luma([if dark_on_light { 255 - v } else { v }])
    });
    let big = image::imageops::resize(
        &digit,
        28 * scale,
        28 * scale,
        image::imageops::FilterType::Triangle,
    );
    let mut out = GrayImage::from_pixel(
        canvas.0,
        canvas.1,
        Luma([if dark_on_light { 255 } else { 0 }]),
    );
    image::imageops::overlay(&mut out, &big, at.0 as i64, at.1 as i64);
    out
}

#[test]
fn predict_reads_pictures_of_any_kind_like_the_test_digit() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let out = wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "3",
        "--limit-train",
        "12000",
        "--limit-test",
        "100",
        "--save",
        model.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let ck = checkpoint::load(&model, MNIST, None).unwrap();
    let test = mnist(Split::Test, 12);
    let (mut checked, mut pictures, mut agreed) = (0, 0, 0);
    for n in 0..test.len() {
        // What the network says of the test digit itself...
        let x: Vec<f32> = test
            .image(n)
            .iter()
            .map(|&p| Normalization::UNIT.apply(p))
            .collect();
        let logits = wgcnn::exec::reference::network_forward(
            &ck.network,
            &ck.params,
            &ck.buffers,
            x,
            1,
            None,
        )
        .pop()
        .unwrap();
        let (expected, confidence) =
            wgcnn::predict::ranked(&wgcnn::predict::probabilities(ck.network.loss(), &logits))[0];
        if confidence < 0.9 {
            continue; // a digit the network hesitates on may tip either way when redrawn
        }
        // ...it must say of the same digit drawn other ways.
        let pixels = test.image(n);
        let variants = [
            (
                "light-on-dark-3x",
                variant(pixels, 3, false, (84, 84), (0, 0)),
            ),
            (
                "dark-on-light-2x",
                variant(pixels, 2, true, (56, 56), (0, 0)),
            ),
            ("off-centre", variant(pixels, 2, true, (200, 150), (130, 5))),
            ("small-light", variant(pixels, 1, false, (40, 90), (12, 60))),
        ];
        let mut paths = Vec::new();
        for (name, img) in &variants {
            let path = dir.path().join(format!("digit{n}-{name}.png"));
            img.save(&path).unwrap();
            paths.push(path);
        }
        // Black ink on a transparent ground (its colour channels are all black): the alpha says
        // where the ink is.
        let paper = variant(pixels, 2, true, (56, 56), (0, 0));
        let ink = image::RgbaImage::from_fn(56, 56, |x, y| {
            image::Rgba([0, 0, 0, 255 - paper.get_pixel(x, y).0[0]])
        });
        let path = dir.path().join(format!("digit{n}-transparent.png"));
        ink.save(&path).unwrap();
        paths.push(path);
        let seen = dir.path().join("seen");
        let args: Vec<&str> = [
            "predict",
            "--model",
            model.to_str().unwrap(),
            "--show",
            seen.to_str().unwrap(),
        ]
        .into_iter()
        .chain(paths.iter().map(|p| p.to_str().unwrap()))
        .collect();
        let out = wgcnn(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        for path in &paths {
            let line = stdout
                .lines()
                .find(|l| l.starts_with(path.to_str().unwrap()))
                .unwrap_or_else(|| panic!("{stdout}"));
            // "PATH: 7 (98.0%), 3 (1.6%), 2 (0.3%)": the ranked classes
            let ranked: Vec<usize> = line
                .split(": ")
                .nth(1)
                .unwrap()
                .split(", ")
                .map(|c| c[..1].parse().unwrap())
                .collect();
            // A small network can hesitate on a redrawn digit, but a broken pipeline (polarity,
            // cropping, centring, transparency) loses the digit altogether: the class must be
            // among the first two every time, and first in 9 of 10 pictures overall.
            assert!(
                ranked[..2].contains(&expected),
                "{} (label {}): {line}",
                path.display(),
                test.labels[n]
            );
            pictures += 1;
            agreed += (ranked[0] == expected) as usize;
            let stem = path.file_stem().unwrap().to_string_lossy();
            let frame = image::open(seen.join(format!("{stem}.seen.png")))
                .unwrap()
                .to_luma8();
            assert_eq!(frame.dimensions(), (28, 28));
        }
        checked += 1;
    }
    assert!(
        checked >= 8,
        "only {checked} of 12 test digits were classified with confidence"
    );
    assert!(
        10 * agreed >= 9 * pictures,
        "only {agreed} of {pictures} redrawn digits got the network's class first"
    );
}

/// Hostile checkpoints and outputs: absurd values are refused naming the file and the field;
/// outputs are checked before any training, and never clobber an input or each other.
#[test]
fn absurd_checkpoints_and_clashing_outputs_are_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    let (net, mut exec) = trained("conv8k3-relu-maxpool2-dense10");
    let params = exec.parameters().unwrap();
    checkpoint::save(&good, &net, &params, &[], None, &info(&net.spec, 1)).unwrap();
    let load_err = |p: &Path| {
        checkpoint::load(p, MNIST, None)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // A NaN weight.
    let nan = dir.path().join("nan.safetensors");
    rewrite(&good, &nan, |t| {
        for (n, _, data) in t.iter_mut() {
            if n == "4.weight" {
                data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
            }
        }
    });
    let e = load_err(&nan);
    assert!(
        e.contains("nan.safetensors: tensor '4.weight'") && e.contains("NaN at index 2"),
        "{e}"
    );
    // Metadata out of range, one field at a time.
    for (key, value, needle) in [
        (
            "normalize_std",
            "0",
            "metadata 'normalize_std' is 0; expected a positive number",
        ),
        (
            "epoch",
            "1099511627776",
            "metadata 'epoch' is 1099511627776; expected at most 1000000",
        ),
        (
            "batch_size",
            "0",
            "metadata 'batch_size' is 0; expected at least 1",
        ),
        (
            "lr",
            "inf",
            "metadata 'lr' is inf; expected a positive number",
        ),
        (
            "beta2",
            "1.5",
            "metadata 'beta2' is 1.5; expected a number in [0, 1)",
        ),
    ] {
        let bytes = std::fs::read(&good).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut meta = header.metadata().clone().unwrap();
        meta.insert(key.to_string(), value.to_string());
        let views: Vec<_> = st
            .tensors()
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
        let path = dir.path().join(format!("{key}.safetensors"));
        std::fs::write(&path, safetensors::serialize(views, Some(meta)).unwrap()).unwrap();
        let e = load_err(&path);
        assert!(e.contains(&format!("{key}.safetensors: {needle}")), "{e}");
    }
    // A network whose outputs are not the 10 classes: refused by train, and in a checkpoint.
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--model",
        "dense5",
        "--limit-train",
        "10",
    ]));
    assert!(
        stderr.contains(
            "ends in 5 outputs, but the data has 10 classes: its last layer must be dense10"
        ),
        "{stderr}"
    );
    // Outputs: the --resume checkpoint is not overwritten by --metrics; two outputs on one file,
    // a folder and a missing folder are refused before the first epoch.
    let before = std::fs::read(&good).unwrap();
    let g = good.to_str().unwrap();
    let plot = dir.path().join("p.png");
    let p = plot.to_str().unwrap();
    let d = dir.path().to_str().unwrap();
    for (args, needle) in [
        (vec!["--resume", g, "--metrics", g], "--metrics"),
        (
            vec!["--save", p, "--plot", p],
            "--save and --plot are the same file",
        ),
        (vec!["--plot", d], "is a folder; expected a file name"),
        (
            vec!["--metrics", "/nonexistent-dir/m.jsonl"],
            "the folder /nonexistent-dir does not exist",
        ),
    ] {
        let out = wgcnn(
            &[
                &["train", "--limit-train", "10", "--limit-test", "10"][..],
                &args,
            ]
            .concat(),
        );
        let (stdout, stderr) = text(&out);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
        assert!(
            !stdout.contains("epoch 1/"),
            "{args:?} trained first: {stdout}"
        );
    }
    assert!(text(&wgcnn(&[
        "train",
        "--resume",
        g,
        "--metrics",
        g,
        "--limit-train",
        "10"
    ]))
    .1
    .contains("is the --resume file: writing it would destroy the input"));
    assert_eq!(
        std::fs::read(&good).unwrap(),
        before,
        "the checkpoint was touched"
    );
    // A backend name that is not one.
    let out = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(["train", "--gpu", "--limit-train", "10"])
        .env("WGPU_BACKEND", "vulkna")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("WGPU_BACKEND=vulkna: 'vulkna' is not a graphics API"),
        "{stderr}"
    );
    // predict reads a picture from a pipe (no seeking).
    let digit = dir.path().join("digit.png");
    variant(mnist(Split::Test, 1).image(0), 1, false, (28, 28), (0, 0))
        .save(&digit)
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_wgcnn"))
        .args(["predict", "--model", g, "/dev/stdin"])
        .stdin(std::fs::File::open(&digit).unwrap())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("/dev/stdin: "),
        "{stdout}\n{stderr}"
    );
    // Two pictures with the same name in different folders: each keeps its own seen picture.
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for d in [&a, &b] {
        std::fs::create_dir(d).unwrap();
        std::fs::copy(&digit, d.join("digit.png")).unwrap();
    }
    let seen = dir.path().join("seen");
    let out = wgcnn(&[
        "predict",
        "--model",
        g,
        "--show",
        seen.to_str().unwrap(),
        a.join("digit.png").to_str().unwrap(),
        b.join("digit.png").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(seen.join("digit.seen.png").is_file() && seen.join("digit-2.seen.png").is_file());
    // A file name as long as the system allows is written (the temporary name is short); a
    // symbolic link is written through; a device is refused before training.
    let long = dir.path().join(format!("{}.safetensors", "m".repeat(240)));
    let target = dir.path().join("target.safetensors");
    std::fs::write(&target, b"old").unwrap();
    let link = dir.path().join("link.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    for save in [&long, &link] {
        let out = wgcnn(&[
            "train",
            "--model",
            "relu-maxpool",
            "--epochs",
            "1",
            "--limit-train",
            "20",
            "--limit-test",
            "10",
            "--save",
            save.to_str().unwrap(),
        ]);
        assert!(out.status.success(), "{:?}", text(&out));
    }
    assert!(checkpoint::load(&long, MNIST, None).is_ok());
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert!(
        checkpoint::load(&target, MNIST, None).is_ok(),
        "written through the link"
    );
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--save",
        "/dev/null",
        "--limit-train",
        "10",
    ]));
    assert!(stderr.contains("/dev/null: not a regular file"), "{stderr}");
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn predict_and_outputs_fail_clearly_on_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let (net, mut exec) = trained("conv8k3-relu-maxpool2-dense10");
    let model = dir.path().join("m.safetensors");
    checkpoint::save(
        &model,
        &net,
        &exec.parameters().unwrap(),
        &[],
        None,
        &info(&net.spec, 1),
    )
    .unwrap();
    let m = model.to_str().unwrap();

    let not_image = dir.path().join("notes.png");
    std::fs::write(&not_image, b"this is not a picture").unwrap();
    let blank = dir.path().join("blank.png");
    GrayImage::from_pixel(30, 30, Luma([200]))
        .save(&blank)
        .unwrap();
    let (_, stderr) = text(&wgcnn(&[
        "predict",
        "--model",
        m,
        not_image.to_str().unwrap(),
        blank.to_str().unwrap(),
    ]));
    assert!(
        stderr.contains("notes.png: not a readable PNG, JPEG or BMP image"),
        "{stderr}"
    );
    assert!(stderr.contains("blank.png: no digit found"), "{stderr}");
    assert!(
        stderr.contains("2 of 2 images could not be classified") && !stderr.contains("panicked"),
        "{stderr}"
    );

    let (_, stderr) = text(&wgcnn(&["eval", "--model", not_image.to_str().unwrap()]));
    assert!(
        stderr.contains("not a valid safetensors checkpoint"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "1",
        "--limit-train",
        "50",
        "--limit-test",
        "10",
        "--metrics",
        "/nonexistent-dir/m.jsonl",
    ]));
    assert!(
        stderr.contains("--metrics /nonexistent-dir/m.jsonl: cannot write: the folder /nonexistent-dir does not exist"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "1",
        "--limit-train",
        "50",
        "--limit-test",
        "10",
        "--save",
        "/nonexistent-dir/m.safetensors",
    ]));
    assert!(
        stderr.contains("/nonexistent-dir/m.safetensors: cannot write"),
        "{stderr}"
    );
    // No temporary file is left behind by a failed or successful save.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());
}

#[test]
fn every_command_explains_its_options_and_defaults() {
    for (command, needles) in [
        (
            "train",
            &[
                "--save",
                "--resume",
                "--plot",
                "--metrics",
                "--quiet",
                "--gpu",
                "[default: assets/mnist]",
            ][..],
        ),
        ("eval", &["--model", "--plot", "--limit-test", "--gpu"][..]),
        ("predict", &["--model", "--show", "IMAGE"][..]),
        (
            "bench",
            &[
                "--steps",
                "[default: 50]",
                "--repeats",
                "[default: 5]",
                "--json",
                "--profile",
            ][..],
        ),
    ] {
        let (stdout, _) = text(&wgcnn(&[command, "--help"]));
        for needle in needles {
            assert!(
                stdout.contains(needle),
                "{command} --help lacks {needle}:\n{stdout}"
            );
        }
    }
    // --quiet leaves only the summary.
    let (stdout, _) = text(&wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "1",
        "--limit-train",
        "100",
        "--limit-test",
        "20",
        "--quiet",
    ]));
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("final test accuracy"), "{stdout}");
}

/// The `augment` metadata: read back as written, absent in older checkpoints (no augmentation),
/// and refused naming the file and the field when malformed.
#[test]
fn checkpoints_record_their_augmentation_and_refuse_a_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let (net, mut exec) = trained("conv8k3-relu-maxpool2-dense10");
    let params = exec.parameters().unwrap();
    let augmented = CheckpointInfo {
        augment: Some(wgcnn::ops::Augment::DEFAULT),
        ..info(&net.spec, 1)
    };
    let path = dir.path().join("aug.safetensors");
    checkpoint::save(&path, &net, &params, &[], None, &augmented).unwrap();
    assert_eq!(
        checkpoint::load(&path, MNIST, None).unwrap().info,
        augmented
    );
    let old = dir.path().join("old.safetensors");
    rewrite_metadata(&path, &old, |m| {
        m.remove("augment");
    });
    assert_eq!(
        checkpoint::load(&old, MNIST, None).unwrap().info.augment,
        None
    );
    for (value, says) in [
        ("shift=20,rotate=10,scale=0.1,flip=0", "from 0 to 8"),
        ("sideways", "expected key=value"),
    ] {
        let bad = dir.path().join("bad.safetensors");
        rewrite_metadata(&path, &bad, |m| {
            m.insert("augment".into(), value.into());
        });
        let e = checkpoint::load(&bad, MNIST, None).unwrap_err().to_string();
        assert!(
            e.contains("bad.safetensors: metadata 'augment' is") && e.contains(says),
            "{value}: {e}"
        );
    }
}
