#!/usr/bin/env python3
"""Writes large recipes for bench/recipe_scale.sh (issue 32): engine cost at 10^3 … 10^6 instances.

  recipe_scale.py sweep N      one training swept over N learning rates: N instances
  recipe_scale.py cross A B    A learning rates × B score batch sizes: A + A·B instances (+ a report)
  recipe_scale.py chain N      N stages, each fine-tuning the one before: N instances, N − 1 edges

The data are the embedded digits (32 images), so `plan` and `status` can fingerprint them.
`max_instances` is raised to the size asked for, so the limit does not refuse the bench itself.
"""
import os
import sys

HEADER = """[recipe]
name = "scale_{name}"
seeds = [0]
device = "cpu"
max_instances = {limit}

[datasets.id]
format = "idx"
root = "{root}"
classes = [0, 1]
limit = 32

[datasets.ood]
format = "idx"
root = "{root}"
classes = [7]
limit = 16
"""

TRAIN = """
[stages.base]
kind = "train"
data = "id"
widths = [2]
strides = [2]
epochs = 1
batch_size = 16
"""


def lrs(n):
    # Distinct, exactly representable in TOML: 1e-6 steps.
    return ", ".join(f"{(i + 1) * 1e-6:.6f}" for i in range(n))


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    mode, sizes = sys.argv[1], [int(x) for x in sys.argv[2:]]
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "data", "mnist-10k")
    root = os.path.normpath(root)
    out = []
    if mode == "sweep":
        (n,) = sizes
        out.append(HEADER.format(name=f"sweep_{n}", limit=max(n, 100_000), root=root))
        out.append(TRAIN + f"lr = {{ sweep = [{lrs(n)}] }}\n")
    elif mode == "cross":
        a, b = sizes
        total = a + a * b + 1
        out.append(HEADER.format(name=f"cross_{a}x{b}", limit=max(total, 100_000), root=root))
        out.append(TRAIN + f"lr = {{ sweep = [{lrs(a)}] }}\n")
        batch = ", ".join(str(8 + i) for i in range(b))
        out.append(
            '\n[stages.scores]\nkind = "score"\nmodel = "base"\nid = "id"\nood = ["ood"]\n'
            f'methods = ["energy"]\nbatch_size = {{ sweep = [{batch}] }}\n'
        )
        out.append('\n[stages.table]\nkind = "report"\nscores = ["scores"]\n')
    elif mode == "chain":
        (n,) = sizes
        out.append(HEADER.format(name=f"chain_{n}", limit=max(n, 100_000), root=root))
        out.append(TRAIN.replace("[stages.base]", "[stages.s0]"))
        for i in range(1, n):
            out.append(
                f'\n[stages.s{i}]\nkind = "um"\nmodel = "s{i - 1}"\ndata = "id"\nzeta = 0.0\nepochs = 1\n'
            )
    else:
        sys.exit(__doc__)
    sys.stdout.write("".join(out))


if __name__ == "__main__":
    main()
