//! The command line, run as a user would run it.

mod common;

use common::{text, wgcnn, FASHION};

/// The test accuracy of each epoch line, in percent.
fn test_accuracies(stdout: &str) -> Vec<f64> {
    stdout
        .lines()
        .filter(|l| l.starts_with("epoch "))
        .map(|l| {
            let after = l
                .split("test loss")
                .nth(1)
                .expect("epoch line has a test loss");
            let acc = after.split("acc").nth(1).unwrap().trim_start();
            acc.split('%').next().unwrap().trim().parse().unwrap()
        })
        .collect()
}

#[test]
fn training_a_preset_on_a_subset_rises_well_above_chance() {
    // The default CPU executor and the plain reference alike.
    for (extra, device) in [
        (None, "device: CPU (Winograd, direct and im2col + SGEMM"),
        (Some("--cpu-reference"), "device: CPU reference"),
    ] {
        let mut args = vec![
            "train",
            "--model",
            "relu-maxpool",
            "--epochs",
            "3",
            "--limit-train",
            "2000",
            "--limit-test",
            "500",
        ];
        args.extend(extra);
        let out = wgcnn(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        let accs = test_accuracies(&stdout);
        assert_eq!(accs.len(), 3, "{stdout}");
        // Chance is 10%; this network reaches ~90% on 2000 images in 3 epochs.
        assert!(
            accs[2] > 80.0,
            "final test accuracy {}%:\n{stdout}",
            accs[2]
        );
        assert!(
            stdout.contains("img/s") && stdout.contains(device),
            "{stdout}"
        );
        assert!(
            stdout.contains("2000 training images, 500 test images"),
            "{stdout}"
        );
    }
}

#[test]
fn the_same_seed_gives_the_same_run() {
    let args = [
        "train",
        "--model",
        "conv4k3-tanh-dropout0.3-dense10",
        "--epochs",
        "1",
        "--limit-train",
        "300",
        "--limit-test",
        "100",
        "--seed",
        "9",
    ];
    let (a, _) = text(&wgcnn(&args));
    let (b, _) = text(&wgcnn(&args));
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.split("  ").take(5).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
}

#[test]
fn a_diverging_run_stops_naming_the_epoch_and_step() {
    let out = wgcnn(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "2",
        "--limit-train",
        "640",
        "--limit-test",
        "10",
        "--lr",
        "1e20",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stderr.contains("training diverged in epoch 1 at step"),
        "{stderr}"
    );
    assert!(stderr.contains("--lr"), "{stderr}");
    assert!(!stdout.contains("NaN"), "{stdout}");
}

#[test]
fn bad_options_and_data_give_clear_errors() {
    let (_, stderr) = text(&wgcnn(&["train", "--model", "lenet"]));
    assert!(
        stderr.contains("unknown preset 'lenet'") && stderr.contains("tanh-avgpool"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&["train", "--model", "conv8k3-relu"]));
    assert!(stderr.contains("last layer must be a dense"), "{stderr}");
    let (_, stderr) = text(&wgcnn(&["train", "--data", "/nonexistent/mnist"]));
    assert!(
        stderr.contains("/nonexistent/mnist: no such directory"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--model",
        "conv8k30-dense10",
        "--limit-train",
        "10",
    ]));
    assert!(
        stderr.contains("kernel 30 is larger than the padded input 28x28"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&["train", "--batch-size", "0"]));
    assert!(
        stderr.contains("--batch-size must be at least 1"),
        "{stderr}"
    );
    let (_, stderr) = text(&wgcnn(&["train", "--momentum", "1.5"]));
    assert!(stderr.contains("--momentum must be in [0, 1)"), "{stderr}");
    for bad in ["0", "1.5", "NaN"] {
        let (_, stderr) = text(&wgcnn(&["train", "--lr-decay", bad]));
        assert!(
            stderr.contains(&format!("--lr-decay must be in (0, 1], not {bad}")),
            "{stderr}"
        );
    }
    // The optimizers' and schedules' settings.
    for (args, needle) in [
        (
            &["--betas", "0.9"][..],
            "expected BETA1,BETA2 with each in [0, 1)",
        ),
        (
            &["--betas", "0.9,1.0"][..],
            "'0.9,1.0': expected BETA1,BETA2",
        ),
        (
            &["--optimizer", "rmsprop"][..],
            "possible values: sgd, adam, adamw",
        ),
        (
            &["--eps", "0"][..],
            "--eps must be a positive number, not 0",
        ),
        (
            &["--weight-decay", "-1"][..],
            "--weight-decay must be 0 or more, not -1",
        ),
        (
            &["--optimizer", "adamw", "--lr", "0.5", "--weight-decay", "4"][..],
            "would shrink the weights by 2 each step",
        ),
        (
            &["--schedule", "linear"][..],
            "possible values: constant, step, cosine, onecycle",
        ),
        (
            &["--warmup", "1.5"][..],
            "'1.5': expected a number of steps (e.g. 500) or a fraction",
        ),
        (&["--warmup", "-3"][..], "expected a number of steps"),
        // Augmentation's ranges.
        (
            &["--augment-shift", "9"][..],
            "--augment-shift: expected 0 to 8 pixels, not 9",
        ),
        (
            &["--augment", "--augment-rotate", "50"][..],
            "--augment-rotate: expected 0 to 45 degrees, not 50",
        ),
        (
            &["--augment-scale", "0.5"][..],
            "--augment-scale: expected at least 0 and below 0.5, not 0.5",
        ),
        (
            &["--augment", "--no-augment"][..],
            "'--augment' cannot be used with '--no-augment'",
        ),
        // A flat batch normalization and a batch of one.
        (
            &[
                "--model",
                "dense8-bn-dense10",
                "--batch-size",
                "1",
                "--limit-train",
                "10",
            ][..],
            "layer 2 (bn) normalizes 8 features over the batch, and a batch of 1",
        ),
    ] {
        let (_, stderr) = text(&wgcnn(&[&["train"][..], args].concat()));
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--epochs",
        "2",
        "--stop-after",
        "0",
        "--limit-train",
        "10",
    ]));
    assert!(
        stderr.contains("--stop-after 0: the run is already past epoch 0"),
        "{stderr}"
    );
    // Sizes near the integer limits are refused before anything is allocated, naming the layer;
    // so is a network whose activations cannot fit in this machine's memory.
    for (model, needle) in [
        ("conv4294967296k3-dense10", "layer 0 (conv4294967296k3) on input 1x28x28: its weight would have more than 268435456 elements"),
        ("conv8k3p4294967295-dense10", "its padded input would have more than 268435456 elements"),
        ("dense99999999999-dense10", "layer 1 (dense99999999999) on input 784: its weight would have more"),
    ] {
        let (_, stderr) = text(&wgcnn(&["train", "--model", model, "--limit-train", "10"]));
        assert!(stderr.contains(needle), "{model}: {stderr}");
    }
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--model",
        "conv1024k3p60-dense10",
        "--batch-size",
        "256",
        "--limit-train",
        "10",
    ]));
    assert!(
        stderr.contains("at batch size 256 needs at least") && stderr.contains("MiB on the CPU"),
        "{stderr}"
    );
}

#[test]
fn help_shows_the_defaults() {
    let (stdout, _) = text(&wgcnn(&["train", "--help"]));
    for needle in [
        "--model",
        "[default: default, or the network of --resume]",
        "--data",
        "[default: assets/mnist]",
        "--seed",
        "the preset's",
    ] {
        assert!(stdout.contains(needle), "missing {needle}:\n{stdout}");
    }
    let (stdout, _) = text(&wgcnn(&["presets"]));
    assert!(
        stdout.contains(
            "conv32k3-relu-conv64k3-relu-maxpool2-dropout0.25-dense128-relu-dropout0.5-dense10"
        ) && stdout.contains("lr decay 0.7"),
        "{stdout}"
    );
}

/// Whether a GPU adapter can be opened here; without one (and without WGCNN_REQUIRE_GPU=1) the
/// GPU command-line test skips, saying so.
fn gpu_available() -> bool {
    match wgcnn::exec::gpu::Gpu::new(&wgcnn::exec::gpu::AdapterChoice::default()) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var("WGCNN_REQUIRE_GPU").map_or(true, |v| v != "1"),
                "WGCNN_REQUIRE_GPU=1 but no GPU adapter: {e:#}"
            );
            eprintln!("skipping: no GPU adapter ({e:#})");
            false
        }
    }
}

#[test]
fn training_on_the_gpu_from_the_command_line_matches_the_cpu() {
    if !gpu_available() {
        return;
    }
    let args = [
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "2",
        "--limit-train",
        "1000",
        "--limit-test",
        "300",
    ];
    let cpu = wgcnn(&args);
    let gpu = wgcnn(&[&args[..], &["--gpu"]].concat());
    let ((cpu_out, _), (gpu_out, gpu_err)) = (text(&cpu), text(&gpu));
    assert!(gpu.status.success(), "{gpu_out}\n{gpu_err}");
    assert!(
        gpu_out.contains("device: ") && !gpu_out.contains("device: CPU"),
        "{gpu_out}"
    );
    let (c, g) = (test_accuracies(&cpu_out), test_accuracies(&gpu_out));
    assert_eq!(g.len(), 2, "{gpu_out}");
    assert!(g[1] > 70.0, "GPU test accuracy {}%:\n{gpu_out}", g[1]);
    // Same seed, same batches, same masks: the GPU lands in the CPU's band (here 300 test images,
    // so one image is 0.33%).
    assert!(
        (g[1] - c[1]).abs() <= 1.0,
        "GPU {}% vs. CPU {}%",
        g[1],
        c[1]
    );
}

#[test]
fn an_unknown_adapter_name_lists_the_adapters() {
    let (_, stderr) = text(&wgcnn(&[
        "train",
        "--gpu",
        "--adapter",
        "no-such-gpu-anywhere",
        "--limit-train",
        "10",
    ]));
    // With adapters: "no GPU adapter's name contains ...; available: ..."; without any, the
    // message says how to get one. Either way, no panic.
    assert!(
        stderr.contains("no GPU adapter's name contains 'no-such-gpu-anywhere'; available:")
            || stderr.contains("apt-get install libvulkan1 mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let (_, stderr) = text(&wgcnn(&["train", "--adapter", "x"]));
    assert!(
        stderr.contains("--adapter chooses a GPU: add --gpu"),
        "{stderr}"
    );
}

#[test]
fn bench_json_names_the_network_and_its_parameter_count() {
    // bench/compare.py checks PyTorch's twin of each network against these fields.
    let out = wgcnn(&[
        "bench",
        "--model",
        "relu-maxpool",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--repeats",
        "1",
        "--limit-train",
        "200",
        "--json",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(v["spec"], "conv8k3-relu-maxpool2-dense10-softmax", "{v}");
    // conv 8x(1x3x3)+8, then dense 10x(8x13x13)+10.
    assert_eq!(v["parameters"], 80 + 13530, "{v}");
    assert_eq!(v["batch_size"], 32, "{v}");
    assert_eq!(v["train_images"], 200, "{v}");
    assert!(v["median_images_per_second"].as_f64().unwrap() > 0.0, "{v}");
}

#[test]
fn fashion_mnist_by_name_trains_and_every_output_names_its_classes() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("f.safetensors");
    let metrics = dir.path().join("f.jsonl");
    let train = |data: &[&str], save: bool| {
        let mut args = vec![
            "train",
            "--model",
            "relu-maxpool",
            "--epochs",
            "1",
            "--limit-train",
            "1000",
            "--limit-test",
            "300",
        ];
        args.extend(data);
        if save {
            args.extend([
                "--save",
                model.to_str().unwrap(),
                "--metrics",
                metrics.to_str().unwrap(),
            ]);
        }
        let out = wgcnn(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        stdout
    };
    let stdout = train(&["--dataset", "fashion-mnist"], true);
    assert!(
        stdout.contains("1000 training images, 300 test images from assets/fashion-mnist")
            && stdout.contains(&format!("classes: {}", FASHION.join(", "))),
        "{stdout}"
    );
    let accs = test_accuracies(&stdout);
    // Chance is 10%; 1000 pictures of clothes for one epoch give this network about 70%.
    assert!(accs[0] > 50.0, "{stdout}");
    // --dataset NAME is --data assets/NAME: the same run.
    let same = train(&["--data", "assets/fashion-mnist"], false);
    assert_eq!(test_accuracies(&same), accs, "{same}");
    // The metrics list the classes.
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&metrics).unwrap().trim()).unwrap();
    assert_eq!(line["classes"], serde_json::json!(FASHION), "{line}");

    // eval, without --data: the shipped data set whose classes the model names, the confusion
    // matrix's rows and the predictions named.
    let predictions = dir.path().join("p.csv");
    let out = wgcnn(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--limit-test",
        "300",
        "--predictions",
        predictions.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("data: 300 test images from assets/fashion-mnist")
            && stdout.contains(&format!("accuracy {:.2}%", accs[0]))
            && stdout.contains("rows: true class"),
        "{stdout}"
    );
    for (i, name) in FASHION.iter().enumerate() {
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{i} {name} "))
                    && l.trim_end().ends_with('%')),
            "no row for {name}:\n{stdout}"
        );
    }
    assert!(!stderr.contains("warning"), "{stderr}");
    let csv = std::fs::read_to_string(&predictions).unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("index,label,predicted,probability,label_name,predicted_name")
    );
    // The first test picture is an ankle boot (label 9).
    let first: Vec<&str> = rows.next().unwrap().split(',').collect();
    assert_eq!((first[1], first[4]), ("9", "Ankle boot"), "{csv}");
    let predicted: usize = first[2].parse().unwrap();
    assert_eq!(first[5], FASHION[predicted], "{csv}");
    assert_eq!(rows.count(), 299);
    // eval on the digits: done, but warned.
    let out = wgcnn(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--dataset",
        "mnist",
        "--limit-test",
        "50",
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("warning:")
            && stderr.contains("names its classes T-shirt/top, Trouser")
            && stderr.contains("assets/mnist holds 0, 1, 2")
            && stderr.contains("(it has no classes.txt)"),
        "{stderr}"
    );

    // predict names the class: the first test picture (an ankle boot) as a PNG.
    let test = wgcnn::data::load_split(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/fashion-mnist"),
        wgcnn::data::Split::Test,
    )
    .unwrap();
    let picture = dir.path().join("boot.png");
    image::GrayImage::from_raw(28, 28, test.image(0).to_vec())
        .unwrap()
        .save(&picture)
        .unwrap();
    let out = wgcnn(&[
        "predict",
        "--model",
        model.to_str().unwrap(),
        picture.to_str().unwrap(),
    ]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let ranked = stdout.split(": ").nth(1).expect("PATH: ranked classes");
    let named: Vec<&str> = ranked
        .split(", ")
        .map(|c| c.rsplit_once(" (").expect("NAME (P%)").0)
        .collect();
    assert_eq!(named.len(), 3, "{stdout}");
    assert!(named.iter().all(|n| FASHION.contains(n)), "{stdout}");

    // Resuming without --data continues on the data set the checkpoint names; with another,
    // says so.
    for (data, from, note) in [
        (None, "from assets/fashion-mnist", false),
        (Some("mnist"), "from assets/mnist", true),
    ] {
        let mut args = vec![
            "train",
            "--resume",
            model.to_str().unwrap(),
            "--epochs",
            "2",
            "--limit-train",
            "200",
            "--limit-test",
            "50",
        ];
        if let Some(name) = data {
            args.extend(["--dataset", name]);
        }
        let out = wgcnn(&args);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(stdout.contains(from), "{stdout}");
        assert_eq!(
            stderr.contains("note: ") && stderr.contains("under the data's names"),
            note,
            "{stderr}"
        );
    }

    // bench takes it too.
    let out = wgcnn(&[
        "bench",
        "--dataset",
        "fashion-mnist",
        "--model",
        "relu-maxpool",
        "--steps",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
}

#[test]
fn dataset_and_data_together_or_an_unknown_name_are_refused() {
    for command in ["train", "eval", "bench"] {
        let out = wgcnn(&[
            command,
            "--dataset",
            "fashion-mnist",
            "--data",
            "assets/mnist",
            "--model",
            "x",
        ]);
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "{command}");
        assert!(
            stderr.contains("'--dataset <NAME>' cannot be used with '--data <DIR>'"),
            "{command}: {stderr}"
        );
    }
    let (_, stderr) = text(&wgcnn(&["train", "--dataset", "kmnist"]));
    assert!(
        stderr.contains("invalid value 'kmnist' for '--dataset <NAME>'")
            && stderr.contains("[possible values: mnist, fashion-mnist]"),
        "{stderr}"
    );
    // Both are explained.
    for command in ["train", "eval", "bench"] {
        let (stdout, _) = text(&wgcnn(&[command, "--help"]));
        for needle in [
            "--data <DIR>",
            "classes.txt",
            "--dataset <NAME>",
            "fashion-mnist",
        ] {
            assert!(stdout.contains(needle), "{command} --help lacks {needle}");
        }
    }
}

/// --augment: said in the header, recorded in the checkpoint, kept by --resume (unless
/// --no-augment), and drawn by `wgcnn augment`.
#[test]
fn augmentation_is_announced_saved_resumed_and_drawn() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    let m = model.to_str().unwrap();
    let data = ["--limit-train", "300", "--limit-test", "50"];
    let run = |args: &[&str]| {
        let out = wgcnn(&[args, &data[..]].concat());
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{args:?}: {stdout}\n{stderr}");
        stdout
    };
    let out = run(&[
        "train",
        "--model",
        "relu-maxpool",
        "--epochs",
        "1",
        "--augment",
        "--augment-flip",
        "--save",
        m,
    ]);
    assert!(
        out.contains("augmentation: shifts up to 2 px, rotations up to 10 degrees, scaling up to 10%, mirrored half the time"),
        "{out}"
    );
    let bytes = std::fs::read(&model).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(
        header.metadata().as_ref().unwrap()["augment"],
        "shift=2,rotate=10,scale=0.1,flip=1"
    );
    let out = run(&[
        "train",
        "--resume",
        m,
        "--epochs",
        "2",
        "--augment-shift",
        "1",
        "--save",
        m,
    ]);
    assert!(
        out.contains("augmentation: shifts up to 1 px, rotations up to 10 degrees"),
        "{out}"
    );
    let out = run(&["train", "--resume", m, "--epochs", "3", "--no-augment"]);
    assert!(out.contains("augmentation: off"), "{out}");
    let out = run(&["train", "--model", "relu-maxpool", "--epochs", "1"]);
    assert!(out.contains("augmentation: off"), "{out}");
    // The fashion preset trains on Fashion-MNIST, augmented, unless told otherwise.
    let out = run(&[
        "train",
        "--model",
        "fashion",
        "--epochs",
        "1",
        "--batch-size",
        "64",
    ]);
    assert!(
        out.contains("from assets/fashion-mnist") && out.contains("mirrored half the time"),
        "{out}"
    );
    let out = run(&[
        "train",
        "--model",
        "fashion",
        "--epochs",
        "1",
        "--dataset",
        "mnist",
        "--no-augment",
    ]);
    assert!(
        out.contains("from assets/mnist") && out.contains("augmentation: off"),
        "{out}"
    );

    let picture = dir.path().join("aug.png");
    let out = wgcnn(&[
        "augment",
        "--out",
        picture.to_str().unwrap(),
        "--count",
        "5",
        "--rows",
        "2",
    ]);
    assert!(out.status.success(), "{:?}", text(&out));
    let image = image::open(&picture).unwrap();
    // 5 columns and 3 rows of 112-pixel images, 4-pixel gaps, a wider gap under the originals.
    assert_eq!((image.width(), image.height()), (5 * 116 + 4, 3 * 116 + 8));
    for (args, needle) in [
        (&["--count", "0"][..], "--count 0: expected 1 to 32 images"),
        (&["--no-augment"][..], "there is nothing to show"),
    ] {
        let out = wgcnn(&[&["augment", "--out", picture.to_str().unwrap()][..], args].concat());
        let (_, stderr) = text(&out);
        assert!(
            !out.status.success() && stderr.contains(needle),
            "{args:?}: {stderr}"
        );
    }
}
