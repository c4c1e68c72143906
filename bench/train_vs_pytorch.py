"""Training-step benchmark: this project (`pipeline bench-train`) against PyTorch on the same
networks, batch, optimiser, dropout, random crop and thread count. Both sides run what a training
loop runs each step: gather a batch from a shuffled training set, crop it (zero padding, a random
shift per image), forward with dropout, cross-entropy, backward, SGD with Nesterov momentum, and
read the loss and the batch's accuracy back. Runs are interleaved (ours, PyTorch, ours, …) so
drift in the machine's speed hits both alike; every run is a fresh process that does `warmup`
untimed steps, then `steps` timed ones. Per net and thread count it prints the median step time
of each, their ratio, images/s, achieved GFLOP/s (training FLOPs counted on the PyTorch model,
the same for both) and the peak resident memory during the timed steps.

    python bench/train_vs_pytorch.py --binary target/release/pipeline   # see train_vs_pytorch.sh
    python bench/train_vs_pytorch.py worker --net resnet-20 --threads 1   # one PyTorch run
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# (warmup, timed steps) per run: enough steps for a stable median within a few minutes.
STEPS = {"small-cnn": (3, 20), "resnet-20": (1, 5), "densenet-bc-40": (1, 3), "densenet-bc-100": (1, 2), "wrn-40-4": (1, 2), "resnet-18": (1, 2)}


def proc_status(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def crop(images, padding, generator):
    """A random shift by up to `padding` pixels per image, zero-filled (a random crop of the
    zero-padded image)."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).tolist()
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])


def worker(args):
    global torch
    import torch

    sys.path.insert(0, HERE)
    from torch_nets import bench_net, learnable

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model, shape = bench_net(args.net, args.dropout)
    model.to(device)
    model.eval() if args.eval else model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, nesterov=True)
    count = (args.warmup + args.steps + 1) * args.batch
    data = torch.rand(count, *shape)
    targets = torch.randint(0, 10, (count,))
    order = torch.randperm(count)
    generator = torch.Generator().manual_seed(args.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, rss_before, reset = [], None, False
    for step in range(args.warmup + args.steps):
        if step == args.warmup:
            rss_before, reset = proc_status("VmRSS"), reset_peak()
        sync()
        start = time.perf_counter()
        if args.eval:
            # Scoring: evaluation mode, no autograd graph, the logits read back.
            images = data[:args.batch].to(device)
            with torch.inference_mode():
                value = model(images).sum().item()
        else:
            chunk = order[step * args.batch:(step + 1) * args.batch]
            images = crop(data[chunk], args.crop_padding, generator).to(device, non_blocking=True)
            labels = targets[chunk].to(device, non_blocking=True)
            opt.zero_grad(set_to_none=True)
            logits = model(images)
            loss = torch.nn.functional.cross_entropy(logits, labels)
            loss.backward()
            opt.step()
            value = loss.item()
            (logits.argmax(1) == labels).sum().item()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
        if value != value:
            raise SystemExit(f"loss is NaN at step {step}")
    print(json.dumps({
        "framework": "pytorch " + torch.__version__, "net": args.net, "mode": "eval" if args.eval else "training", "batch": args.batch,
        "threads": torch.get_num_threads(), "learnable_weights": learnable(model), "device": str(device),
        "dropout": args.dropout, "crop_padding": args.crop_padding,
        "step_seconds": times, "peak_rss_bytes": proc_status("VmHWM") if reset else None,
        "rss_before_bytes": rss_before,
    }))


def default_crop(net):
    """The CIFAR recipes' crop padding for 32×32 nets; none for the MNIST-sized small CNN."""
    return 0 if net == "small-cnn" else 4


def run_json(cmd, env):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(args):
    sys.path.insert(0, HERE)
    import torch
    from torch_nets import bench_net, training_flops

    rows = []
    for net in args.nets:
        model, shape = bench_net(net)
        # A forward pass is about a third of a training step's work.
        flops = training_flops(model, shape, args.batch) / (3 if args.eval else 1)
        warmup, steps = STEPS[net]
        for threads in args.threads:
            base = dict(os.environ)
            ours_env = {**base, "RAYON_NUM_THREADS": str(threads)}
            torch_env = {**base, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
            common = ["--net", net, "--batch", str(args.batch), "--warmup", str(warmup), "--steps", str(steps)]
            if args.eval:
                common.append("--eval")
            else:
                crop_padding = default_crop(net) if args.crop_padding is None else args.crop_padding
                common += ["--dropout", str(args.dropout), "--crop-padding", str(crop_padding)]
            common += ["--device", args.device]
            ours_cmd = [args.binary, "bench-train", *common]
            torch_cmd = [sys.executable, os.path.abspath(__file__), "worker", *common, "--threads", str(threads)]
            ours, theirs = [], []
            for r in range(args.rounds):
                ours.append(run_json(ours_cmd, ours_env))
                theirs.append(run_json(torch_cmd, torch_env))
                print(f"  {net} threads={threads} round {r + 1}/{args.rounds}: ours {statistics.median(ours[-1]['step_seconds']) * 1e3:.1f} ms, "
                      f"pytorch {statistics.median(theirs[-1]['step_seconds']) * 1e3:.1f} ms", file=sys.stderr, flush=True)
            if ours[0]["learnable_weights"] != theirs[0]["learnable_weights"]:
                raise SystemExit(f"{net}: {ours[0]['learnable_weights']} weights here, {theirs[0]['learnable_weights']} in PyTorch")
            row = {"net": net, "threads": threads, "learnable_weights": ours[0]["learnable_weights"], "training_gflop_per_step": flops / 1e9}
            for name, runs in (("ours", ours), ("pytorch", theirs)):
                median = statistics.median(t for run in runs for t in run["step_seconds"])
                peaks = [run["peak_rss_bytes"] for run in runs if run["peak_rss_bytes"]]
                row[name] = {"median_step_s": median, "images_per_s": args.batch / median, "gflop_per_s": flops / median / 1e9,
                             "peak_rss_mib": max(peaks) / 2**20 if peaks else None, "framework": runs[0]["framework"]}
            row["ratio"] = row["ours"]["median_step_s"] / row["pytorch"]["median_step_s"]
            row["ours"]["host_syncs_per_step"] = ours[0].get("host_syncs_per_step")
            row["ours"]["bytes_to_device_per_step"] = ours[0].get("bytes_to_device_per_step")
            rows.append(row)
    print(f"batch {args.batch}, dropout {args.dropout}, crop padding {'per net' if args.crop_padding is None else args.crop_padding}, "
          f"device {args.device}, {args.rounds} interleaved rounds per cell, {rows[0]['pytorch']['framework']}; "
          "peak RSS = whole process during the timed steps")
    print("| net | threads | ours ms/step | PyTorch ms/step | ratio | ours img/s | PyTorch img/s | ours GFLOP/s | PyTorch GFLOP/s | ours peak MiB | PyTorch peak MiB | ours syncs/step | ours bytes up/step |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
    for r in rows:
        o, p = r["ours"], r["pytorch"]
        print(f"| {r['net']} | {r['threads']} | {o['median_step_s'] * 1e3:.1f} | {p['median_step_s'] * 1e3:.1f} | {r['ratio']:.2f} | "
              f"{o['images_per_s']:.0f} | {p['images_per_s']:.0f} | {o['gflop_per_s']:.1f} | {p['gflop_per_s']:.1f} | "
              f"{fmt(o['peak_rss_mib'])} | {fmt(p['peak_rss_mib'])} | {fmt(o['host_syncs_per_step'])} | {fmt(o['bytes_to_device_per_step'])} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    what = "evaluation-batch" if args.eval else "step"
    print(f"worst {what}-time ratio vs PyTorch: {max(r['ratio'] for r in rows):.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    w = sub.add_parser("worker", help="one PyTorch run, one JSON line")
    for p in (parser, w):
        p.add_argument("--batch", type=int, default=64)
        p.add_argument("--eval", action="store_true", help="time evaluation-mode forward passes (scoring) instead of training steps")
        p.add_argument("--dropout", type=float, default=0.3, help="dropout probability on both sides (the train stage's default, 0.3)")
        p.add_argument("--device", default="cpu", help="cpu or cuda (both sides)")
    w.add_argument("--net", required=True, choices=sorted(STEPS))
    w.add_argument("--threads", type=int, default=1)
    w.add_argument("--warmup", type=int, default=1)
    w.add_argument("--steps", type=int, default=5)
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--crop-padding", type=int, default=0)
    parser.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "pipeline"))
    parser.add_argument("--nets", nargs="+", default=["small-cnn", "resnet-20", "densenet-bc-40", "densenet-bc-100"], choices=sorted(STEPS))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--crop-padding", type=int, default=None, help="random-crop padding on both sides (default: 4 for 32×32 nets, 0 for small-cnn)")
    args = parser.parse_args()
    worker(args) if args.command == "worker" else compare(args)


if __name__ == "__main__":
    main()
