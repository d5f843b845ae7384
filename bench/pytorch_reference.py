#!/usr/bin/env python3
"""PyTorch training speed on the CPU or a CUDA GPU, measured exactly as `wgcnn bench` measures ours.

    python3 bench/pytorch_reference.py --model default [--batch-size 64] [--steps 50] [--warmup 5]
                                        [--repeats 5] [--threads N] [--json]
                                        [--device cpu|cuda] [--tf32 off|default]

With --device cuda the data set, the model and every step live on the GPU, and the clock is read
only after torch.cuda.synchronize(), before and after each repetition (CUDA runs asynchronously).
--tf32 off (the default) computes in true fp32, as wgcnn's kernels do; --tf32 default leaves
PyTorch's own setting (TF32 convolutions through cuDNN on Ampere and later), to show what a
PyTorch user gets out of the box.

The same network (built from the same spec, see tests/fixtures/check_checkpoint.py), the same
MNIST files from assets/, the same batch size, SGD with the preset's lr and momentum, as many
threads as cores. To be fair to PyTorch the whole training set is normalised into one float tensor
up front, so a step is only an index_select, forward, loss, backward and optimizer step (no
DataLoader). Reports the median images per second of `repeats` runs of `steps` steps.
"""
import argparse
import gzip
import json
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
from check_checkpoint import build  # noqa: E402  (the spec -> torch.nn.Sequential builder)

# src/spec.rs PRESETS: name -> (spec, batch size, lr, momentum)
PRESETS = {
    "default": ("conv32k3-relu-conv64k3-relu-maxpool2-dropout0.25-dense128-relu-dropout0.5-dense10", 64, 0.02, 0.9),
    "tanh-avgpool": ("conv6k3-tanh-avgpool3s1-dense32-tanh-dense10", 32, 0.05, 0.9),
    "dropout": ("conv16k3-tanh-dropout0.5-dense10", 32, 0.01, 0.9),
    "two-conv": ("conv16k3-tanh-conv32k3-tanh-dropout0.5-dense10", 32, 0.01, 0.9),
    "relu-maxpool": ("conv8k3-relu-maxpool2-dense10", 32, 0.05, 0.9),
    "batch1": ("conv8k3nb-maxpool2-dense10", 1, 0.005, 0.0),
    "sigmoid-bce": ("conv6k3-sigmoid-dense100-tanh-dense10-bce", 32, 0.1, 0.9),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--tf32", choices=["off", "default"], default="off")
    a = ap.parse_args()
    if a.device == "cuda":
        if not torch.cuda.is_available():
            sys.exit("error: --device cuda: this PyTorch sees no CUDA GPU")
        if a.tf32 == "off":
            torch.backends.cuda.matmul.allow_tf32 = False
            torch.backends.cudnn.allow_tf32 = False
    device = torch.device(a.device)

    def sync():
        if a.device == "cuda":
            torch.cuda.synchronize()

    spec, batch, lr, momentum = PRESETS.get(a.model, (a.model, 32, 0.05, 0.9))
    batch = a.batch_size or batch
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    raw = gzip.open(os.path.join(ROOT, "assets/mnist/train-images.idx3-ubyte.gz")).read()
    images = torch.tensor(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28)).float() / 255.0
    labels = torch.tensor(np.frombuffer(gzip.open(os.path.join(ROOT, "assets/mnist/train-labels.idx1-ubyte.gz")).read(), np.uint8, offset=8).astype(np.int64))
    images, labels = images.to(device), labels.to(device)
    model, loss_kind = build(spec)
    model = model.to(device)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    generator = torch.Generator().manual_seed(a.seed)
    order = torch.randperm(len(labels), generator=generator).to(device)
    position = 0

    def step():
        nonlocal position, order
        if position + batch > len(labels):
            order, position = torch.randperm(len(labels), generator=generator).to(device), 0
        idx = order[position:position + batch]
        position += batch
        x, y = images.index_select(0, idx), labels.index_select(0, idx)
        opt.zero_grad(set_to_none=True)
        z = model(x)
        if loss_kind == "softmax":
            loss = F.cross_entropy(z, y)
        elif loss_kind == "bce":
            loss = F.binary_cross_entropy_with_logits(z, F.one_hot(y, 10).float())
        else:
            loss = F.mse_loss(torch.sigmoid(z), F.one_hot(y, 10).float())
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step()
    rates = []
    for _ in range(a.repeats):
        sync()
        started = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        loss.item()  # waits for the last step (wgcnn's bench reads its metrics back likewise)
        sync()
        rates.append(a.steps * batch / (time.perf_counter() - started))
    rate = statistics.median(rates)
    result = {
        "model": a.model, "spec": spec, "device": (f"PyTorch {torch.__version__} CPU, {torch.get_num_threads()} threads" if a.device == "cpu"
                   else f"PyTorch {torch.__version__} CUDA {torch.cuda.get_device_name()}, TF32 {a.tf32}"),
        "batch_size": batch, "steps": a.steps, "repeats": a.repeats, "images_per_second": rates,
        "median_images_per_second": rate, "median_step_ms": 1000.0 * batch / rate, "epoch_seconds": len(labels) / rate,
        "train_images": len(labels),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"bench {a.model} ({spec}) on {result['device']}: batch {batch}, {a.warmup} warm-up steps, {a.repeats} x {a.steps} timed steps")
        print("images/s per repetition: " + ", ".join(f"{r:.0f}" for r in rates))
        print(f"median: {rate:.0f} images/s, {result['median_step_ms']:.2f} ms/step, {result['epoch_seconds']:.1f} s per epoch of {len(labels)} images (training only)")


if __name__ == "__main__":
    main()
