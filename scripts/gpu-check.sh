#!/usr/bin/env bash
# The one prepared check for a GPU machine (issue 17): a machine with the NVIDIA driver and
# PyTorch's CUDA 13 wheels (cuBLAS, cuRAND, NVRTC) but no Rust toolchain and no network.
#
#   bash scripts/gpu-check.sh prepare     # here: strip and gzip the CUDA binary into target/gpu-check/
#                                         # (~20 MB; the device tool carries at most 64 MiB)
#   bash scripts/gpu-check.sh run         # there, with `target/gpu-check` carried; writes
#                                         # $OUT/gpu-check.json (or target/gpu-check/gpu-check.json)
#
# What `run` does, in about 3–5 minutes on an H100/H200:
# 1. prints the device (nvidia-smi) and the CUDA libraries it found;
# 2. runs the smoke recipes (smoke, um, oe) once with device = "cuda" and once with "cpu", the
#    same binary, and compares every report row: |ΔAUROC| ≤ 0.05, |ΔFPR95| ≤ 0.10 and
#    |ΔID accuracy| ≤ 0.05 (GPU reductions are not bit-identical to the CPU's, and two epochs of
#    a tiny CNN amplify that; a wrong kernel shows as far larger differences);
# 3. times DenseNet-BC-100 training steps (batch 64, 3 warm-up + 20 timed) on the GPU and
#    estimates a CIFAR-10 epoch (50,000 images) from the median step;
# 4. times evaluation-mode scoring on the GPU (bench/scoring_densenet.toml's MSP stage: a
#    DenseNet-BC-100 forward over 1,280 images), in images per second.
# Exit status 1 when a comparison fails; the JSON says which. GPU_CHECK_DEVICE=cpu runs the same
# plumbing on a machine without a GPU (both sides on the CPU), to check the script itself.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/gpu-check
mode="${1:-run}"
say() { printf 'gpu-check: %s\n' "$*" >&2; }

if [ "$mode" = prepare ]; then
    binary=target/cuda/release/pipeline
    [ -x "$binary" ] || { say "no $binary: run bash scripts/build-cuda.sh first"; exit 1; }
    mkdir -p "$dir"
    strip -o "$dir/pipeline" "$binary"
    gzip -9 -f "$dir/pipeline"
    say "wrote $dir/pipeline.gz ($(du -h "$dir/pipeline.gz" | cut -f1)); carry '$dir'"
    exit 0
fi
[ "$mode" = run ] || { say "unknown mode '$mode' (prepare, run)"; exit 2; }

out="${OUT:-$dir}"
gpu="${GPU_CHECK_DEVICE:-cuda}"
mkdir -p "$out"
work="$(mktemp -d)"
bin="$work/pipeline"
gunzip -c "$dir/pipeline.gz" > "$bin"
chmod +x "$bin"
# CUDA 13 libraries from PyTorch's wheels, wherever python3 has them.
libs="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)"
[ -d "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
device="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)"
say "device: $device; CUDA libraries from ${libs:-the system}"

# 2. Smoke recipes on both devices.
data="$PWD/recipes/data/mnist-10k"
compare_rows=()
for recipe in smoke um oe; do
    for side in gpu cpu; do
        dev=cpu
        [ "$side" = gpu ] && dev="$gpu"
        sed -e "s/^device = .*/device = \"$dev\"/" -e "s#\.\./data/mnist-10k#$data#" \
            "recipes/smoke/$recipe.toml" > "$work/$recipe-$side.toml"
        start=$(date +%s%N)
        "$bin" run "$work/$recipe-$side.toml" --quiet --cache "$work/cache-$side" --json > "$work/$recipe-$side.jsonl"
        echo "$(( ($(date +%s%N) - start) / 1000000 ))" > "$work/$recipe-$side.ms"
    done
    compare_rows+=("$recipe")
done

# 3. Training steps; 4. evaluation.
"$bin" bench-train --net densenet-bc-100 --device "$gpu" --batch 64 --warmup 3 --steps 20 > "$work/train.json"
sed -e 's/^device = .*/device = "cuda"/' -e "s#\${PIPELINE_DATA:-../recipes/data}#$PWD/recipes/data#" \
    bench/scoring_densenet.toml | sed "s/^device = .*/device = \"$gpu\"/" > "$work/scoring.toml"
"$bin" run "$work/scoring.toml" --quiet --only score_msp --cache "$work/cache-scoring" --json > /dev/null
"$bin" run "$work/scoring.toml" --quiet --only score_msp --force score_msp --cache "$work/cache-scoring" --json \
    > "$work/scoring.jsonl"

python3 - "$work" "$out/gpu-check.json" "$device" "${compare_rows[@]}" <<'PY'
import json, pathlib, statistics, sys
work, target, device, recipes = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4:]
limits = {"auroc": 0.05, "fpr95": 0.10, "id_accuracy": 0.05}

def reports(jsonl):
    found = {}
    for line in jsonl.read_text().splitlines():
        e = json.loads(line)
        if e.get("event") in ("finished", "reused") and (pathlib.Path(e["outputs"]) / "report.json").exists():
            found[e["stage"]] = json.loads((pathlib.Path(e["outputs"]) / "report.json").read_text())
    return found

result = {"device": device, "recipes": {}, "failures": []}
for recipe in recipes:
    gpu, cpu = reports(work / f"{recipe}-gpu.jsonl"), reports(work / f"{recipe}-cpu.jsonl")
    worst = {k: 0.0 for k in limits}
    for stage, report in cpu.items():
        other = {(r["scores"], r["method"], r["ood"]): r for r in gpu[stage]["rows"]}
        for row in report["rows"]:
            twin = other[(row["scores"], row["method"], row["ood"])]
            for k, limit in limits.items():
                d = abs(row[k]["mean"] - twin[k]["mean"])
                worst[k] = max(worst[k], d)
                if d > limit:
                    result["failures"].append(f"{recipe}/{stage}: {row['scores']} {row['method']} {row['ood']} {k} differs by {d:.4f}")
    result["recipes"][recipe] = {
        "worst_difference": worst,
        "gpu_ms": int((work / f"{recipe}-gpu.ms").read_text()),
        "cpu_ms": int((work / f"{recipe}-cpu.ms").read_text()),
    }
train = json.loads((work / "train.json").read_text())
step = statistics.median(train["step_seconds"])
result["densenet_bc_100_training"] = {
    "batch": train["batch"], "median_step_seconds": step, "images_per_second": train["batch"] / step,
    "cifar10_epoch_seconds_estimate": 50000 / train["batch"] * step,
}
for line in (work / "scoring.jsonl").read_text().splitlines():
    e = json.loads(line)
    if e.get("event") == "finished" and e["stage"].startswith("score_msp"):
        scores = json.loads((pathlib.Path(e["outputs"]) / "scores.json").read_text())
        n = scores["id"]["count"] + sum(o["count"] for o in scores["ood"])
        result["densenet_bc_100_scoring"] = {"images": n, "seconds": e["seconds"], "images_per_second": n / e["seconds"]}
pathlib.Path(target).write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
sys.exit(1 if result["failures"] else 0)
PY
