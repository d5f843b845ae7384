#!/usr/bin/env python3
"""Run `wgcnn bench` and `bench/pytorch_reference.py` side by side and print the ratio.

    python3 bench/compare.py [--models default relu-maxpool] [--steps 50] [--repeats 5] [--rounds 3]

Each benchmark runs as its own process; the two alternate for `rounds` rounds (ours, PyTorch, ours,
PyTorch, ...) so that a machine whose speed drifts (shared or virtual cores) affects both alike,
and the medians are over every repetition of every round. Peak memory is the largest maximum
resident set size of a process (from wait4). Prints a Markdown table. Use bench/compare.sh, which
installs PyTorch into a virtual environment first.
"""
import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_measured(cmd):
    """Run cmd, return (its JSON line, peak RSS in MiB)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.chdir(ROOT)
        os.dup2(w, 1)
        os.close(r)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.execvp(cmd[0], cmd)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    _, status, usage = os.wait4(pid, 0)
    if status != 0:
        sys.exit(f"{' '.join(cmd)} failed (status {status}); run it alone to see why")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024.0


def pooled(runs):
    """One result from several runs of the same benchmark: the median over all their repetitions."""
    rates = [r for run in runs for r in run["images_per_second"]]
    result = dict(runs[0])
    result["images_per_second"] = rates
    result["median_images_per_second"] = statistics.median(rates)
    result["epoch_seconds"] = result["train_images"] / result["median_images_per_second"]
    return result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["default", "relu-maxpool"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--wgcnn", default=os.path.join(ROOT, "target/release/wgcnn"))
    a = ap.parse_args()
    common = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--repeats", str(a.repeats), "--json"]
    rows = []
    for model in a.models:
        ours_runs, theirs_runs, our_mem, their_mem = [], [], 0.0, 0.0
        for _ in range(a.rounds):
            ours, mem = run_measured([a.wgcnn, "bench", "--model", model] + common)
            ours_runs.append(ours)
            our_mem = max(our_mem, mem)
            theirs, mem = run_measured([a.python, os.path.join(ROOT, "bench/pytorch_reference.py"), "--model", model] + common)
            theirs_runs.append(theirs)
            their_mem = max(their_mem, mem)
        rows.append((model, pooled(ours_runs), our_mem, pooled(theirs_runs), their_mem))
    print(f"measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} cores; medians of {a.rounds} alternating rounds x {a.repeats} x {a.steps} training steps (after {a.warmup} warm-up steps per run)\n")
    print("| network | batch | wgcnn images/s | PyTorch images/s | ratio | wgcnn epoch s | PyTorch epoch s | wgcnn peak MiB | PyTorch peak MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for model, ours, our_mem, theirs, their_mem in rows:
        ratio = ours["median_images_per_second"] / theirs["median_images_per_second"]
        print(f"| {model} | {ours['batch_size']} | {ours['median_images_per_second']:.0f} | {theirs['median_images_per_second']:.0f} | "
              f"{ratio:.2f}x | {ours['epoch_seconds']:.1f} | {theirs['epoch_seconds']:.1f} | {our_mem:.0f} | {their_mem:.0f} |")
    print(f"\nwgcnn: {rows[0][1]['device']}; PyTorch: {rows[0][3]['device']}")


if __name__ == "__main__":
    main()
