#!/usr/bin/env python3
"""Run `wgcnn bench` and `bench/pytorch_reference.py` side by side and print the ratio.

    python3 bench/compare.py [--models all | NAME ...] [--mode short|epoch|both]
                             [--dropout keep|remove|both | --no-dropout] [--threads 2]
                             [--steps 50] [--warmup 5] [--repeats 5] [--rounds R]
                             [--epochs 2] [--warmup-epochs 1] [--limit-train N]
                             [--pytorch-data float32|uint8] [--isa native|avx2] [--json FILE]
                             [--python PATH] [--wgcnn PATH]

Use bench/compare.sh, which builds wgcnn and installs PyTorch into a virtual environment first.

The networks are the presets of `wgcnn presets` (all of them by default, but those that augment their images or train on another data set: best, fashion), read from the binary
itself: its spec, batch size, optimizer (SGD with its lr and momentum, or Adam with its lr and
betas) and input normalisation are passed explicitly to PyTorch's side, which builds the same
torch.nn.Sequential from the same spec (tests/fixtures/check_checkpoint.py). Like `wgcnn bench`,
both sides train at the preset's base learning rate (no schedule: the rate does not change the
work of a step). Before any figure is reported, the two networks' specs, batch sizes and parameter
counts must agree. `--dropout remove` (or `--no-dropout`) runs the same networks with their
dropout layers taken out of the spec, on both sides; `--dropout both` runs each network with
dropout and, where it has any, without.

Modes:
  short  `--rounds` (3) rounds; in each, one process per side (ours first, then PyTorch), each
         `--warmup` (5) untimed steps then `--repeats` (5) x `--steps` (50) timed steps. The
         median is over every repetition of every round.
  epoch  whole epochs: one process per side and round (`--rounds`, 1 here), each
         `--warmup-epochs` (1) untimed epochs then `--epochs` (2) timed ones; the median is over
         the timed epochs of every round. An epoch is len // batch full batches of a fresh
         shuffle of the training set (60000 images, or `--limit-train N`), the shuffle inside the
         timed window. Ours is `wgcnn bench --warmup K*E --steps E --repeats N` with E = len //
         batch, not `wgcnn train --metrics`, because that is what PyTorch's side measures too:
         training steps only, at a constant rate, without the test-set evaluation `train` runs
         after every epoch (its images/s leaves the evaluation out, but not the evaluation's
         buffers from the peak memory) and without the progress readbacks; the last partial batch
         (len % batch images, under 0.5%) is left out on both sides alike.

`--isa avx2` caps both sides at AVX2 + FMA on a CPU that has more (AVX-512), to measure what an
AVX2-only machine would see: ours through WGCNN_CPU_ISA=avx2, PyTorch through
ATEN_CPU_CAPABILITY=avx2 (its own kernels), ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA=AVX2 (oneDNN's
convolutions and matrix products) and MKL_ENABLE_INSTRUCTIONS=AVX2 (MKL). Both sides' reports must
then name AVX2, else no figure is given. The default, native, lets each side use the best the CPU has.

The sides alternate (ours, PyTorch, ours, PyTorch, ...) so that a machine whose speed drifts
(shared or virtual cores) affects both alike. Each side gets `--threads` (2) threads: ours through
RAYON_NUM_THREADS, PyTorch through torch.set_num_threads (and OMP_NUM_THREADS / MKL_NUM_THREADS).
PyTorch holds the training set as one normalised float32 tensor (179 MiB for 60000 images; wgcnn
keeps the bytes, 45 MiB): the fastest for it, but it shows in its peak memory
(`--pytorch-data uint8` keeps the bytes and converts each batch, as wgcnn does). Peak memory is the
largest maximum resident set size (from wait4) of a side's processes for that network and mode;
PyTorch's includes what `import torch` alone holds (its libraries, about 0.5 GiB for a CUDA build
of PyTorch, less for the CPU-only wheel), which the output states.

Prints a Markdown table at the end (and, with `--json FILE`, writes every figure to FILE).
"""
import argparse
import datetime
import gzip
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(ROOT, "bench", "pytorch_reference.py")
DATA = os.path.join(ROOT, "assets", "mnist")


def fail(message):
    sys.exit(f"bench/compare.py: error: {message}")


def say(message):
    print(message, file=sys.stderr, flush=True)


def read_presets(wgcnn):
    """The presets of `wgcnn presets`: name -> {spec, batch, optimizer, lr, momentum|betas, normalize}."""
    if not os.access(wgcnn, os.X_OK):
        fail(f"{wgcnn} does not exist or is not executable: build it with `cargo build --release` "
             "(bench/compare.sh does), or pass --wgcnn PATH")
    run = subprocess.run([wgcnn, "presets"], capture_output=True, text=True, cwd=ROOT)
    if run.returncode != 0:
        fail(f"`{wgcnn} presets` failed:\n{run.stderr}")
    presets, name = {}, None
    for line in run.stdout.splitlines():
        if not line.strip():
            continue
        if not line[0].isspace():
            name = line.split()[0]
            continue
        # "              data fashion-mnist, weight decay 0.01, augmentation: shifts up to 2 px, ..."
        extra = re.fullmatch(r"\s+data (\S+), weight decay (\S+), augmentation: (.*)", line)
        if name is not None and name in presets and extra:
            presets[name].update(dataset=extra.group(1), weight_decay=float(extra.group(2)), augment=extra.group(3))
            continue
        # "              spec SPEC  (epochs 6, batch size 64, sgd, momentum 0.9, lr 0.02, lr decay 0.7, normalize standard)"
        m = re.fullmatch(r"\s+spec (\S+)\s+\((.*)\)", line)
        if name is None or m is None:
            fail(f"cannot read this line of `wgcnn presets` (has its format changed?): {line!r}")
        p = {"spec": m.group(1)}
        for item in m.group(2).split(", "):
            words = item.split(" ")
            if item in ("sgd", "adam", "adamw"):
                p["optimizer"] = item
            elif item in ("constant", "onecycle", "cosine", "step") or item.startswith("lr decay "):
                p["schedule"] = item  # bench does not schedule the learning rate
            elif words[0] == "epochs":
                p["epochs"] = int(words[1])
            elif item.startswith("batch size "):
                p["batch"] = int(words[2])
            elif words[0] in ("lr", "momentum") and len(words) == 2:
                p[words[0]] = float(words[1])
            elif words[0] == "betas":
                p["betas"] = words[1]
            elif words[0] == "normalize":
                p["normalize"] = words[1]
            else:
                fail(f"cannot read {item!r} in this line of `wgcnn presets` (has its format changed?): {line!r}")
        missing = {"batch", "optimizer", "lr", "normalize"} - p.keys()
        missing |= {"momentum"} - p.keys() if p.get("optimizer") == "sgd" else {"betas"} - p.keys()
        if missing:
            fail(f"`wgcnn presets` gives no {', '.join(sorted(missing))} for {name}: {line!r}")
        presets[name] = p
    if not presets:
        fail(f"`{wgcnn} presets` listed no presets")
    return presets


def without_dropout(spec):
    return "-".join(t for t in spec.split("-") if not re.fullmatch(r"dropout[0-9.]+", t))


def training_images(limit):
    """How many training images both sides train on: the count in the IDX labels file's header."""
    path = os.path.join(DATA, "train-labels.idx1-ubyte.gz")
    try:
        with gzip.open(path) as f:
            magic, count = struct.unpack(">II", f.read(8))
    except OSError as e:
        fail(f"cannot read the MNIST training labels {path}: {e}")
    if magic != 2049:
        fail(f"{path} is not an IDX labels file")
    return min(count, limit) if limit else count


def check_python(python):
    if not os.access(python, os.X_OK):
        fail(f"no Python at {python}: run bench/compare.sh, which creates the virtual environment "
             "target/bench-venv (or WGCNN_BENCH_VENV) with PyTorch, or pass --python PATH of a Python with torch and numpy")
    run = subprocess.run([python, "-c", "import torch, numpy"], capture_output=True, text=True)
    if run.returncode != 0:
        fail(f"{python} cannot import torch and numpy (install them into it: {python} -m pip install torch numpy, "
             f"or let bench/compare.sh make target/bench-venv):\n{run.stderr.strip().splitlines()[-1] if run.stderr.strip() else ''}")


def run_measured(cmd, env):
    """Run cmd; return (the JSON object of its last stdout line, its peak RSS in MiB)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=err, env={**os.environ, **env})
        # wait4, not proc.wait(): it also gives the child's resource usage (its own, alone).
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(errors="replace"), err.read().decode(errors="replace")
    if proc.returncode != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        fail(f"`{' '.join(cmd)}` failed (exit status {proc.returncode}):\n{tail}")
    try:
        result = json.loads(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        fail(f"`{' '.join(cmd)}` printed no JSON line:\n{stdout}\n{stderr}")
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    mib = usage.ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)
    return result, mib


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description="wgcnn's fast CPU executor beside PyTorch on the same networks, data and threads "
                                             "(see the top of this file)")
    ap.add_argument("--models", nargs="+", default=["all"], metavar="NAME",
                    help="presets of `wgcnn presets`, or all (the default)")
    ap.add_argument("--mode", choices=["short", "epoch", "both"], default="short",
                    help="short windows of steps (the default), whole epochs, or both")
    ap.add_argument("--dropout", choices=["keep", "remove", "both"], default="keep",
                    help="run the networks as they are (default), with their dropout layers removed, or both")
    ap.add_argument("--no-dropout", dest="dropout", action="store_const", const="remove", help="the same as --dropout remove")
    ap.add_argument("--threads", type=int, default=2, help="threads for each side (default 2)")
    ap.add_argument("--steps", type=int, default=50, help="short mode: timed steps per repetition (default 50)")
    ap.add_argument("--warmup", type=int, default=5, help="short mode: untimed steps per process first (default 5)")
    ap.add_argument("--repeats", type=int, default=5, help="short mode: repetitions per process (default 5)")
    ap.add_argument("--rounds", type=int,
                    help="alternating rounds (one process per side each) [default: 3 in short mode, 1 in epoch mode]")
    ap.add_argument("--epochs", type=int, default=2, help="epoch mode: timed epochs per process (default 2)")
    ap.add_argument("--warmup-epochs", type=int, default=1, help="epoch mode: untimed epochs per process first (default 1)")
    ap.add_argument("--limit-train", type=int, metavar="N", help="train on the first N training images only (both sides; for smoke tests)")
    ap.add_argument("--pytorch-data", choices=["float32", "uint8"], default="float32",
                    help="PyTorch's training set in memory: normalised float32 (default) or bytes converted per batch")
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="native (default): each side uses the best the CPU has; avx2: both capped at AVX2 + FMA")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument("--python", default=sys.executable, help="a Python with torch and numpy (default: this one)")
    ap.add_argument("--wgcnn", default=os.path.join(ROOT, "target/release/wgcnn"))
    ap.add_argument("--check-args", action="store_true", help=argparse.SUPPRESS)  # bench/compare.sh: validate, run nothing
    a = ap.parse_args()

    for flag, value, least in [("--threads", a.threads, 1), ("--steps", a.steps, 1), ("--warmup", a.warmup, 0),
                               ("--repeats", a.repeats, 1), ("--rounds", a.rounds, 1), ("--epochs", a.epochs, 1),
                               ("--warmup-epochs", a.warmup_epochs, 0), ("--limit-train", a.limit_train, 1)]:
        if value is not None and value < least:
            fail(f"{flag} must be at least {least} (got {value})")
    if a.json:
        folder = os.path.dirname(os.path.abspath(a.json))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            fail(f"--json {a.json}: cannot write into {folder}")
    presets = read_presets(a.wgcnn)
    # PyTorch's twin trains on MNIST as it is: presets that augment their images or train on
    # another data set (best, fashion) have no twin here.
    def twinless(n):
        p = presets[n]
        return p.get("augment", "off") != "off" or p.get("dataset", "mnist") != "mnist"
    names = [n for m in a.models for n in ([p for p in presets if not twinless(p)] if m == "all" else [m])]
    unknown = [n for n in names if n not in presets]
    if unknown:
        fail(f"unknown preset{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
             f"available: {', '.join(presets)} (or all)")
    alone = [n for n in names if twinless(n)]
    if alone:
        fail(f"{', '.join(alone)}: augmented training images or another data set, which PyTorch's twin here does "
             "not have; time them with `wgcnn bench --model NAME` (all, the default, leaves them out)")
    train_len = training_images(a.limit_train)
    for n in names:
        if presets[n]["batch"] > train_len:
            fail(f"{n} trains in batches of {presets[n]['batch']}, more than the {train_len} training images (--limit-train)")
    if a.check_args:
        return
    check_python(a.python)

    # The networks: (label, preset name, spec, whether it is the preset as it is).
    networks = []
    for n in dict.fromkeys(names):
        spec = presets[n]["spec"]
        bare = without_dropout(spec)
        if a.dropout in ("keep", "both") or bare == spec:
            networks.append((n, n, spec, True))
        if a.dropout in ("remove", "both") and bare != spec:
            networks.append((f"{n} without dropout", n, bare, False))
    modes = ["short", "epoch"] if a.mode == "both" else [a.mode]
    threads = str(a.threads)
    ours_env = {"RAYON_NUM_THREADS": threads}
    theirs_env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    if a.isa == "avx2":
        ours_env["WGCNN_CPU_ISA"] = "avx2"
        theirs_env.update(ATEN_CPU_CAPABILITY="avx2", ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2",
                          MKL_ENABLE_INSTRUCTIONS="AVX2")

    rows, checked = [], set()
    for label, name, spec, as_preset in networks:
        p = presets[name]
        batch = p["batch"]
        settings = ["--batch-size", str(batch), "--optimizer", p["optimizer"], "--lr", str(p["lr"]),
                    "--normalize", p["normalize"]]
        settings += ["--momentum", str(p["momentum"])] if p["optimizer"] == "sgd" else ["--betas", p["betas"]]
        # Ours: the preset by name where it is unchanged (its own defaults), else the spec with every setting.
        ours_model = ["--model", name] if as_preset else ["--model", spec] + settings
        theirs_model = ["--model", spec] + settings + ["--threads", threads, "--data-dtype", a.pytorch_data]
        limit = ["--limit-train", str(a.limit_train)] if a.limit_train else []
        for mode in modes:
            if mode == "short":
                steps, warmup, repeats, rounds = a.steps, a.warmup, a.repeats, a.rounds or 3
            else:
                steps = train_len // batch  # one epoch of full batches
                warmup, repeats, rounds = a.warmup_epochs * steps, a.epochs, a.rounds or 1
            common = ["--steps", str(steps), "--warmup", str(warmup), "--repeats", str(repeats), "--json"] + limit
            ours_runs, theirs_runs, ours_mem, theirs_mem = [], [], 0.0, 0.0
            for r in range(rounds):
                ours, mem = run_measured([a.wgcnn, "bench"] + ours_model + common, ours_env)
                ours_runs.append(ours)
                ours_mem = max(ours_mem, mem)
                theirs, mem2 = run_measured([a.python, REFERENCE] + theirs_model + common, theirs_env)
                theirs_runs.append(theirs)
                theirs_mem = max(theirs_mem, mem2)
                if label not in checked:
                    # Same network, same batch, else no figure means anything.
                    ours_spec, theirs_spec = ours["spec"].removesuffix("-softmax"), theirs["spec"].removesuffix("-softmax")
                    if (ours_spec, ours["parameters"], ours["batch_size"]) != (theirs_spec, theirs["parameters"], theirs["batch_size"]):
                        fail(f"{label}: the two sides differ: wgcnn {ours['spec']} ({ours['parameters']} parameters, batch "
                             f"{ours['batch_size']}), PyTorch {theirs['spec']} ({theirs['parameters']} parameters, batch {theirs['batch_size']})")
                    if f"{a.threads} threads" not in ours["device"] or f"{a.threads} threads" not in theirs["device"]:
                        fail(f"{label}: asked for {a.threads} threads, got: wgcnn {ours['device']}; {theirs['device']}")
                    if a.isa == "avx2" and not ("AVX2," in ours["device"] and "AVX2," in theirs["device"]):
                        fail(f"{label}: --isa avx2, but a side does not report AVX2 (does this CPU have AVX2 and FMA?): "
                             f"wgcnn {ours['device']}; {theirs['device']}")
                    checked.add(label)
                    say(f"{label}: {ours['spec']}, batch {batch}, {theirs['optimizer']}, {p['normalize']} input; "
                        f"{ours['parameters']} parameters in wgcnn, {theirs['parameters']} in PyTorch")
                say(f"  {mode} round {r + 1}/{rounds}: wgcnn {ours['median_images_per_second']:.0f} images/s ({mem:.0f} MiB), "
                    f"PyTorch {theirs['median_images_per_second']:.0f} images/s ({mem2:.0f} MiB)")
            ours_rates = [x for run in ours_runs for x in run["images_per_second"]]
            theirs_rates = [x for run in theirs_runs for x in run["images_per_second"]]
            ours_median, theirs_median = statistics.median(ours_rates), statistics.median(theirs_rates)
            rows.append({
                "network": label, "preset": name, "spec": ours_runs[0]["spec"], "dropout_removed": not as_preset,
                "parameters": ours_runs[0]["parameters"], "batch_size": batch, "optimizer": theirs_runs[0]["optimizer"],
                "normalize": p["normalize"], "mode": mode, "rounds": rounds, "warmup_steps": warmup, "steps": steps,
                "repeats": repeats, "train_images": ours_runs[0]["train_images"],
                "wgcnn": {"device": ours_runs[0]["device"], "images_per_second": ours_rates,
                          "median_images_per_second": ours_median, "peak_mib": ours_mem},
                "pytorch": {"device": theirs_runs[0]["device"], "images_per_second": theirs_rates,
                            "median_images_per_second": theirs_median, "peak_mib": theirs_mem,
                            "parameters": theirs_runs[0]["parameters"], "data_dtype": a.pytorch_data,
                            "import_peak_mib": max(run["import_peak_mib"] for run in theirs_runs)},
                "ratio": ours_median / theirs_median,
            })

    today = datetime.date.today().isoformat()
    print(f"\nmeasured {today} on {cpu_name()} ({os.cpu_count()} cores), {a.threads} threads each side, "
          f"{train_len} training images" + (", both sides capped at AVX2 + FMA (--isa avx2)" if a.isa == "avx2" else ""))
    for mode in modes:
        if mode == "short":
            print(f"short: medians of {a.rounds or 3} alternating rounds x {a.repeats} x {a.steps} training steps "
                  f"(after {a.warmup} warm-up steps per process)")
        else:
            print(f"epoch: medians of {a.rounds or 1} alternating rounds x {a.epochs} epochs of len // batch steps "
                  f"(after {a.warmup_epochs} warm-up epochs per process)")
    print()
    print("| network | batch | mode | ours img/s | PyTorch img/s | ratio | ours peak MiB | PyTorch peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['network']} | {r['batch_size']} | {r['mode']} | {r['wgcnn']['median_images_per_second']:.0f} | "
              f"{r['pytorch']['median_images_per_second']:.0f} | {r['ratio']:.2f}x | {r['wgcnn']['peak_mib']:.0f} | "
              f"{r['pytorch']['peak_mib']:.0f} |")
    print(f"\nours: wgcnn {rows[0]['wgcnn']['device']}; PyTorch: {rows[0]['pytorch']['device']}, "
          f"training set as {a.pytorch_data}; PyTorch's peak includes the "
          f"{max(r['pytorch']['import_peak_mib'] for r in rows):.0f} MiB its process holds once `import torch` is done")
    if a.json:
        report = {
            "date": today, "cpu": cpu_name(), "cores": os.cpu_count(), "threads": a.threads, "train_images": train_len,
            "isa": a.isa,
            "modes": modes, "dropout": a.dropout, "short": {"steps": a.steps, "warmup": a.warmup, "repeats": a.repeats, "rounds": a.rounds or 3},
            "epoch": {"epochs": a.epochs, "warmup_epochs": a.warmup_epochs, "rounds": a.rounds or 1},
            "rows": rows,
        }
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)
            f.write("\n")
        print(f"wrote {a.json}")


if __name__ == "__main__":
    main()
