#!/usr/bin/env python3
"""Whole training epochs of the default recipe's base model, ours against PyTorch (issue 19):

    BENCH_VENV=/tmp/torchenv python3 bench/epoch_vs_pytorch.py [--rounds 3] [--threads 2]

Ours: `pipeline run bench/epoch.toml --force base`, seconds per epoch = the stage's time / its
epochs (loading 4,796 digits is included, about 1%). PyTorch: the same epoch written out here:
the same IDX files and class subset, the dataset's mean/std normalisation (the recipe's
`normalization = "auto"` on 1×28×28 data), bench/torch_nets.py's SmallCnn with dropout 0.3,
SGD(lr 0.1, momentum 0.9, Nesterov, weight decay 1e-4), batch 64 over a shuffled order, the
loss read back and the accuracy counted every step, as our fit loop does. Interleaved rounds;
the medians and their ratio are printed, the last line `epoch-time ratio vs PyTorch: X.XX`.
"""
import argparse
import gzip
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
DATA = ROOT / "recipes/data/mnist-10k"


def read_idx(path):
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return dims, raw[4 + 4 * rank:]


def find(stem):
    for name in (stem + ".gz", stem):
        if (DATA / name).is_file():
            return DATA / name
    raise SystemExit(f"missing {stem} in {DATA}")


def pytorch_epochs(threads, epochs, seed=0):
    import numpy as np
    import torch

    sys.path.insert(0, str(HERE))
    from torch_nets import SmallCnn

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    (n, h, w), pixels = read_idx(find("train-images-idx3-ubyte"))
    _, labels = read_idx(find("train-labels-idx1-ubyte"))
    images = np.frombuffer(pixels, dtype=np.uint8).reshape(n, 1, h, w).astype(np.float32) / 255.0
    labels = np.frombuffer(labels, dtype=np.uint8).astype(np.int64)
    keep = labels < 6
    x, y = torch.from_numpy(images[keep].copy()), torch.from_numpy(labels[keep].copy())
    mean, std = [float(x.mean())], [float(x.std(unbiased=False))]
    model = SmallCnn(1, [16, 32, 64, 128], [1, 2, 2, 2], 6, 0.3, mean, std)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(len(y))
        correct, loss_sum = 0, 0.0
        for b in range(0, len(y), 64):
            idx = order[b: b + 64]
            images, targets = x[idx], y[idx]
            opt.zero_grad(set_to_none=True)
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(idx)
            correct += int((logits.argmax(1) == targets).sum())
        times.append(time.perf_counter() - start)
    return {"count": int(len(y)), "epoch_seconds": times}


def ours_epochs(threads, cache):
    env = {**os.environ, "RAYON_NUM_THREADS": str(threads)}
    cmd = [str(ROOT / "target/release/pipeline"), "run", str(HERE / "epoch.toml"), "--json", "--quiet",
           "--force", "base", "--cache", cache]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    seconds = next(e["seconds"] for e in events if e.get("event") == "finished")
    epochs = 4
    return {"epoch_seconds": [seconds / epochs]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("worker", nargs="?")
    args = parser.parse_args()
    if args.worker == "worker":
        print(json.dumps(pytorch_epochs(args.threads, 3)))
        return
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    torch_env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
                 "OMP_WAIT_POLICY": "PASSIVE"}
    ours, theirs = [], []
    with tempfile.TemporaryDirectory() as cache:
        for r in range(args.rounds):
            ours.extend(ours_epochs(args.threads, cache)["epoch_seconds"])
            out = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "worker"],
                                 env=torch_env, capture_output=True, text=True, check=True)
            run = json.loads(out.stdout)
            theirs.extend(run["epoch_seconds"][1:])  # the first epoch warms PyTorch up
            print(f"round {r + 1}/{args.rounds}: ours {ours[-1]:.3f} s/epoch, PyTorch "
                  f"{statistics.median(run['epoch_seconds'][1:]):.3f} s/epoch ({run['count']} images)")
    o, p = statistics.median(ours), statistics.median(theirs)
    print(f"| threads | ours s/epoch | PyTorch s/epoch | ratio |\n|---|---|---|---|\n"
          f"| {args.threads} | {o:.3f} | {p:.3f} | {o / p:.2f} |")
    print(f"epoch-time ratio vs PyTorch: {o / p:.2f}")


if __name__ == "__main__":
    main()
