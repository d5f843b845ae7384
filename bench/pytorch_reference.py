#!/usr/bin/env python3
"""PyTorch training speed on the CPU or a CUDA GPU, measured exactly as `wgcnn bench` measures ours.

    python3 bench/pytorch_reference.py --model default [--batch-size 64] [--steps 50] [--warmup 5]
                                        [--repeats 5] [--threads N] [--json]
                                        [--optimizer sgd|adam|adamw] [--lr LR] [--momentum M]
                                        [--betas B1,B2] [--normalize unit|standard]
                                        [--limit-train N] [--data-dtype float32|uint8]
                                        [--device cpu|cuda] [--tf32 off|default]

--model is a preset name of `wgcnn presets` (the table PRESETS below, kept in step with
src/spec.rs; bench/compare.py checks it against the binary and passes every setting explicitly)
or a spec such as conv8k3-relu-maxpool2-dense10, whose defaults are those of a custom spec in
wgcnn (batch 32, SGD, lr 0.05, momentum 0.9, unit normalisation).

With --device cuda the data set, the model and every step live on the GPU, and the clock is read
only after torch.cuda.synchronize(), before and after each repetition (CUDA runs asynchronously).
--tf32 off (the default) computes in true fp32, as wgcnn's kernels do; --tf32 default leaves
PyTorch's own setting (TF32 convolutions through cuDNN on Ampere and later), to show what a
PyTorch user gets out of the box.

The same network (built from the same spec, see tests/fixtures/check_checkpoint.py), the same
MNIST files from assets/ (the first --limit-train images), the same batch size, the same optimizer
(torch.optim.SGD / Adam / AdamW with the preset's lr, momentum or betas; like `wgcnn bench`, at the
base learning rate, unscheduled), the same input normalisation, the given number of threads.
To be fair to PyTorch the whole training set is normalised into one float tensor up front
(--data-dtype float32, the default: N x 784 x 4 bytes, 179 MiB for 60000 images, which shows in
the peak memory; --data-dtype uint8 keeps the bytes, as wgcnn does, and converts each batch), so a
step is only an index_select, forward, loss, backward and optimizer step (no DataLoader).

The step structure is wgcnn bench's: an epoch is len // batch full batches of a fresh random
permutation, drawn when the next batch would run past the end; so --warmup K*E --steps E with
E = len // batch times whole epochs (the shuffle included), as bench/compare.py --mode epoch does.
Reports the median images per second of `repeats` runs of `steps` steps, and the network's
parameter count (compare.py checks it against wgcnn's).
"""
import argparse
import gzip
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

# The resident memory of the process once torch is imported (its libraries; a CUDA build of
# PyTorch maps far more than a CPU-only one), before any data or model: bench/compare.py reports it
# beside the peak. ru_maxrss is in KiB on Linux, in bytes on macOS.
IMPORT_PEAK_MIB = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024.0 * 1024.0 if sys.platform == "darwin" else 1024.0)



def cpu_capability():
    """The vector instruction set PyTorch's own CPU kernels run with (AVX512, AVX2, DEFAULT...;
    ATEN_CPU_CAPABILITY caps it), or "capability unknown" on a PyTorch too old to say."""
    get = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    return get() if get else "capability unknown"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
from check_checkpoint import build  # noqa: E402  (the spec -> torch.nn.Sequential builder)

# src/spec.rs PRESETS (`wgcnn presets`): name -> the settings `wgcnn bench` uses (it does not
# schedule the learning rate, so no epochs, decay or one-cycle here).
PRESETS = {
    "default": dict(spec="conv32k3-relu-conv64k3-relu-maxpool2-dropout0.25-dense128-relu-dropout0.5-dense10", batch=64,
                    optimizer="sgd", lr=0.02, momentum=0.9, normalize="standard"),
    "tanh-avgpool": dict(spec="conv6k3-tanh-avgpool3s1-dense32-tanh-dense10", batch=32, optimizer="sgd", lr=0.05, momentum=0.9),
    "dropout": dict(spec="conv16k3-tanh-dropout0.5-dense10", batch=32, optimizer="sgd", lr=0.01, momentum=0.9),
    "two-conv": dict(spec="conv16k3-tanh-conv32k3-tanh-dropout0.5-dense10", batch=32, optimizer="sgd", lr=0.01, momentum=0.9),
    "relu-maxpool": dict(spec="conv8k3-relu-maxpool2-dense10", batch=32, optimizer="sgd", lr=0.05, momentum=0.9),
    "batch1": dict(spec="conv8k3nb-maxpool2-dense10", batch=1, optimizer="sgd", lr=0.005, momentum=0.0),
    "sigmoid-bce": dict(spec="conv6k3-sigmoid-dense100-tanh-dense10-bce", batch=32, optimizer="sgd", lr=0.1, momentum=0.9),
    "fast": dict(spec="conv24k5-maxpool2-relu-conv32k5-maxpool2-relu-dense256-relu-dense10", batch=256,
                 optimizer="adam", lr=0.01, betas=(0.7, 0.9), normalize="standard"),
}
# What wgcnn gives a spec that is not a preset (src/cli/mod.rs CUSTOM_DEFAULTS).
CUSTOM = dict(batch=32, optimizer="sgd", lr=0.05, momentum=0.9, betas=(0.9, 0.999), weight_decay=0.0, normalize="unit")
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def betas(text):
    parts = text.split(",")
    if len(parts) != 2 or not all(0.0 <= float(p) < 1.0 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: expected BETA1,BETA2 with each in [0, 1), e.g. 0.9,0.999")
    return float(parts[0]), float(parts[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default", help="a preset name of `wgcnn presets` or a spec")
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    ap.add_argument("--lr", type=float)
    ap.add_argument("--momentum", type=float)
    ap.add_argument("--betas", type=betas, metavar="BETA1,BETA2")
    ap.add_argument("--eps", type=float, default=1e-8)
    ap.add_argument("--weight-decay", type=float)
    ap.add_argument("--normalize", choices=["unit", "standard"])
    ap.add_argument("--limit-train", type=int, metavar="N", help="train on the first N training images only")
    ap.add_argument("--data-dtype", choices=["float32", "uint8"], default="float32",
                    help="the training set in memory: normalised floats (default) or the bytes, converted per batch")
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

    settings = {**CUSTOM, **PRESETS.get(a.model, {"spec": a.model})}
    for key in ("batch_size", "optimizer", "lr", "momentum", "betas", "weight_decay", "normalize"):
        if getattr(a, key) is not None:
            settings["batch" if key == "batch_size" else key] = getattr(a, key)
    spec, batch = settings["spec"], settings["batch"]
    if a.steps < 1 or a.repeats < 1 or a.warmup < 0 or batch < 1:
        sys.exit("error: --steps, --repeats and --batch-size must be at least 1, --warmup at least 0")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)

    raw = gzip.open(os.path.join(ROOT, "assets/mnist/train-images.idx3-ubyte.gz")).read()
    images = torch.tensor(np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 1, 28, 28))
    labels = torch.tensor(np.frombuffer(gzip.open(os.path.join(ROOT, "assets/mnist/train-labels.idx1-ubyte.gz")).read(), np.uint8, offset=8).astype(np.int64))
    del raw
    if a.limit_train is not None:
        if a.limit_train < 1:
            sys.exit("error: --limit-train must be at least 1")
        images, labels = images[:a.limit_train].clone(), labels[:a.limit_train].clone()
    if batch > len(labels):
        sys.exit(f"error: --batch-size must be between 1 and the {len(labels)} training images")
    mean, std = (MNIST_MEAN, MNIST_STD) if settings["normalize"] == "standard" else (0.0, 1.0)

    def normalised(pixels):
        x = pixels.float().div_(255.0)  # in place: one float copy at a time, not three (peak memory)
        return x.sub_(mean).div_(std) if settings["normalize"] == "standard" else x

    if a.data_dtype == "float32":
        images = normalised(images)
    images, labels = images.to(device), labels.to(device)
    model, loss_kind = build(spec)
    model = model.to(device)
    model.train()
    parameters = sum(p.numel() for p in model.parameters())
    kind, lr = settings["optimizer"], settings["lr"]
    if kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=settings["momentum"], weight_decay=settings["weight_decay"])
    else:
        cls = torch.optim.Adam if kind == "adam" else torch.optim.AdamW
        opt = cls(model.parameters(), lr=lr, betas=tuple(settings["betas"]), eps=a.eps, weight_decay=settings["weight_decay"])
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
        if a.data_dtype == "uint8":
            x = normalised(x)
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
    optimizer = (f"sgd, lr {lr}, momentum {settings['momentum']}" if kind == "sgd"
                 else f"{kind}, lr {lr}, betas {settings['betas'][0]},{settings['betas'][1]}, eps {a.eps}")
    if settings["weight_decay"]:
        optimizer += f", weight decay {settings['weight_decay']}"
    result = {
        "model": a.model, "spec": spec, "loss": loss_kind, "parameters": parameters, "optimizer": optimizer,
        "normalize": settings["normalize"], "data_dtype": a.data_dtype, "import_peak_mib": IMPORT_PEAK_MIB, "device": (f"PyTorch {torch.__version__} CPU, {cpu_capability()}, {torch.get_num_threads()} threads" if a.device == "cpu"
                   else f"PyTorch {torch.__version__} CUDA {torch.cuda.get_device_name()}, TF32 {a.tf32}"),
        "batch_size": batch, "steps": a.steps, "repeats": a.repeats, "images_per_second": rates,
        "median_images_per_second": rate, "median_step_ms": 1000.0 * batch / rate, "epoch_seconds": len(labels) / rate,
        "train_images": len(labels),
    }
    if a.json:
        print(json.dumps(result))
    else:
        print(f"bench {a.model} ({spec}, {parameters} parameters) on {result['device']}: batch {batch}, {optimizer}, "
              f"{a.warmup} warm-up steps, {a.repeats} x {a.steps} timed steps")
        print("images/s per repetition: " + ", ".join(f"{r:.0f}" for r in rates))
        print(f"median: {rate:.0f} images/s, {result['median_step_ms']:.2f} ms/step, {result['epoch_seconds']:.1f} s per epoch of {len(labels)} images (training only)")


if __name__ == "__main__":
    main()
