#!/usr/bin/env bash
# The one prepared check for a GPU machine (issues 17 and 30), built to answer everything in
# one run of at most 8 minutes on a machine with the NVIDIA driver, PyTorch's CUDA 13 wheels
# (cuBLAS, cuRAND, NVRTC) or the CUDA libraries elsewhere on LD_LIBRARY_PATH, and no Rust
# toolchain and no network.
#
#   bash scripts/gpu-check.sh prepare     # here: strip and gzip the CUDA binary into target/gpu-check/
#                                         # (~20 MB; the device tool carries at most 64 MiB)
#   bash scripts/gpu-check.sh run         # there, with `target/gpu-check` carried
#
# Every phase runs under its own timeout and appends one JSON object to $OUT/gpu-check.jsonl
# (or target/gpu-check/gpu-check.jsonl) as soon as it ends, so a run cut short keeps what it
# measured; at the end the phases are summarised into gpu-check.json. No `set -e`: a failing
# phase is recorded and the next one runs. The phases:
#  env         the GPU (name, driver, CUDA version, compute capability, memory) against what the
#              binary needs (compute capability >= $GPU_CHECK_MIN_CC, default 9.0: the kernels are
#              compiled for sm_90; a driver for CUDA >= 13.0), and the CUDA libraries found. A
#              verdict that the binary cannot run stops the check there.
#  first       time to the first training step (candle's and this project's kernels compiled
#              or loaded on first use): process wall time and the first step's time.
#  ops         `pipeline check-ops`: every convolution geometry with both gradients (cuDNN where
#              it loads; each line says which), batch norm + ReLU (the CUDA kernels, train and
#              evaluation, + affine; candle's composed ops too), dropout and UMAP masks (bit
#              for bit), whole networks with dropout and ODIN's input gradient, CUDA against
#              the CPU's kernels.
#  smoke       the smoke recipes (smoke, um, oe) on the GPU and on the CPU, report rows compared
#              (|ΔAUROC| <= 0.05, |ΔFPR95| <= 0.10, |Δaccuracy| <= 0.05), and a second GPU run
#              compared with the first output by output (determinism; reported, not failed).
#  batches     bench-train DenseNet-BC-100 at batch 64, 128 and 256 with GPU utilisation and
#              memory sampled every 200 ms.
#  fit         the real fit path at batch 64: DenseNet-BC-100 training with dropout 0.3 and 0,
#              UMAP, and ODIN scoring (bench/scoring_densenet.toml), images/s, host syncs and
#              bytes uploaded per step.
#  pytorch     the same training step in PyTorch on the same GPU (bench/train_vs_pytorch.py
#              worker --device cuda), when `import torch` works with CUDA.
# Exit status 1 when a comparison fails or the environment cannot run the binary.
# GPU_CHECK_DEVICE=cpu runs the same plumbing with both sides on the CPU and small networks (CI).
cd "$(dirname "$0")/.." || exit 2
dir=target/gpu-check
mode="${1:-run}"
say() { printf 'gpu-check: %s\n' "$*" >&2; }

if [ "$mode" = prepare ]; then
    binary="${GPU_CHECK_BINARY:-target/cuda/release/pipeline}"
    [ -x "$binary" ] || { say "no $binary: run bash scripts/build-cuda.sh first"; exit 1; }
    mkdir -p "$dir"
    strip -o "$dir/pipeline" "$binary" || exit 1
    gzip -9 -f "$dir/pipeline" || exit 1
    say "wrote $dir/pipeline.gz ($(du -h "$dir/pipeline.gz" | cut -f1)); carry '$dir'"
    exit 0
fi
[ "$mode" = run ] || { say "unknown mode '$mode' (prepare, run)"; exit 2; }

out="${OUT:-$dir}"
gpu="${GPU_CHECK_DEVICE:-cuda}"
mkdir -p "$out" || exit 2
log="$out/gpu-check.jsonl"
: > "$log"
work="$(mktemp -d)"
bin="$work/pipeline"
gunzip -c "$dir/pipeline.gz" > "$bin" && chmod +x "$bin" || { say "no $dir/pipeline.gz: run prepare first"; exit 2; }
# CUDA 13 libraries from PyTorch's wheels, wherever python3 has them, and cuDNN's
# (nvidia-cudnn-cu13, a dependency of PyTorch's CUDA wheels; the binary uses it for
# convolutions where it loads, candle's convolution otherwise).
libs="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null)"
[ -d "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
cudnn_libs="$(python3 -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cudnn", "lib"))' 2>/dev/null)"
[ -d "$cudnn_libs" ] && export LD_LIBRARY_PATH="$cudnn_libs:$LD_LIBRARY_PATH"
if [ "$gpu" = cpu ]; then
    train_net=small-cnn; fit_net=small-cnn; batches="16 32"; smoke_recipes="smoke"
else
    train_net=densenet-bc-100; fit_net=densenet-bc-100; batches="64 128 256"; smoke_recipes="smoke um oe"
fi

# record NAME STATUS SECONDS JSON-FILE-OR-EMPTY: appends one line to the log.
record() {
    python3 - "$log" "$@" <<'PY'
import json, sys
log, name, status, seconds = sys.argv[1:5]
data = None
if len(sys.argv) > 5 and sys.argv[5]:
    try:
        data = json.load(open(sys.argv[5]))
    except Exception as e:
        data = {"unreadable": str(e)}
with open(log, "a") as f:
    f.write(json.dumps({"phase": name, "status": status, "seconds": float(seconds), "data": data}) + "\n")
PY
}

# phase NAME TIMEOUT FUNCTION: runs the function under a timeout (in a subshell) and records it.
phase() {
    local name="$1" limit="$2" fn="$3" start rc
    say "phase $name (at most ${limit}s)"
    start=$(date +%s.%N)
    ( "$fn" > "$work/$name.out" 2> "$work/$name.err" ) &
    local pid=$!
    ( sleep "$limit"; kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null ) > /dev/null 2>&1 &
    local watchdog=$!
    wait "$pid"; rc=$?
    # The watchdog's whole group, its `sleep` included.
    kill -- "-$watchdog" 2>/dev/null || kill "$watchdog" 2>/dev/null
    wait "$watchdog" 2>/dev/null
    local seconds; seconds=$(python3 -c "import time; print(round(time.time() - $start, 2))")
    local status=ok
    [ "$rc" -ne 0 ] && status="failed (exit $rc)"
    [ "$rc" -ge 128 ] && status="timed out or killed (exit $rc)"
    [ -s "$work/$name.json" ] || printf '{"stderr_tail": %s}\n' "$(tail -c 2000 "$work/$name.err" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')" > "$work/$name.json"
    record "$name" "$status" "$seconds" "$work/$name.json"
    say "phase $name: $status in ${seconds}s"
    return "$rc"
}
set -m  # each phase in its own process group, so a timeout stops its children too

env_phase() {
    python3 - "$gpu" "${GPU_CHECK_MIN_CC:-9.0}" "$libs" > "$work/env.json" <<'PY'
import ctypes.util, json, os, subprocess, sys
gpu, min_cc, libs = sys.argv[1], float(sys.argv[2]), sys.argv[3]
result = {"device": gpu, "problems": []}
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception as e:
        return ""
smi = run("nvidia-smi", "--query-gpu=name,driver_version,compute_cap,memory.total", "--format=csv,noheader")
result["nvidia_smi"] = smi or None
header = run("nvidia-smi")
cuda = next((part.split(":")[1].split()[0] for part in header.split("|") if "CUDA Version" in part), None)
result["driver_cuda"] = cuda
found = {}
for lib in ["cuda", "cublas", "cublasLt", "curand", "nvrtc", "cudnn"]:
    hits = []
    for folder in filter(None, [libs] + os.environ.get("LD_LIBRARY_PATH", "").split(":")):
        if os.path.isdir(folder):
            hits += [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(f"lib{lib}.so")]
    found[lib] = sorted(hits)[:1] or ([ctypes.util.find_library(lib)] if ctypes.util.find_library(lib) else [])
result["libraries"] = found
if gpu != "cpu":
    if not smi:
        result["problems"].append("nvidia-smi finds no GPU (no driver?)")
    else:
        fields = [f.strip() for f in smi.splitlines()[0].split(",")]
        result["gpu"] = {"name": fields[0], "driver": fields[1], "compute_capability": fields[2], "memory": fields[3]}
        try:
            if float(fields[2]) < min_cc:
                result["problems"].append(f"compute capability {fields[2]} < {min_cc}: the binary's kernels are built for sm_{int(min_cc*10)} (rebuild with CUDA_COMPUTE_CAP)")
        except ValueError:
            pass
    if cuda and float(cuda) < 13.0:
        result["problems"].append(f"the driver supports CUDA {cuda}; the binary needs 13.0")
    for lib in ["cuda", "cublas", "cublasLt", "curand", "nvrtc"]:
        if not found[lib]:
            result["problems"].append(f"lib{lib} not found")
result["verdict"] = "runnable" if not result["problems"] else "cannot run: " + "; ".join(result["problems"])
print(json.dumps(result))
sys.exit(1 if result["problems"] else 0)
PY
}

first_phase() {
    local start end
    start=$(date +%s.%N)
    "$bin" bench-train --net small-cnn --device "$gpu" --batch 64 --warmup 0 --steps 2 > "$work/first.raw" || return 1
    end=$(date +%s.%N)
    python3 - "$work/first.raw" "$start" "$end" > "$work/first.json" <<'PY'
import json, sys
line = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
print(json.dumps({"process_seconds": float(sys.argv[3]) - float(sys.argv[2]),
                  "first_step_seconds": line["step_seconds"][0], "second_step_seconds": line["step_seconds"][1],
                  "device": line["device"]}))
PY
}

ops_phase() {
    "$bin" check-ops --device "$gpu" > "$work/ops.raw"
    local rc=$?
    python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(json.dumps({"ops": rows, "failures": [r["op"] for r in rows if not r["passed"]]}))' "$work/ops.raw" > "$work/ops.json"
    return $rc
}

smoke_phase() {
    local data="$PWD/recipes/data/mnist-10k" recipe side dev start
    for recipe in $smoke_recipes; do
        for side in gpu cpu gpu2; do
            dev=cpu
            [ "$side" != cpu ] && dev="$gpu"
            sed -e "s/^device = .*/device = \"$dev\"/" -e "s#\.\./data/mnist-10k#$data#" \
                "recipes/smoke/$recipe.toml" > "$work/$recipe-$side.toml"
            start=$(date +%s%N)
            "$bin" run "$work/$recipe-$side.toml" --quiet --cache "$work/cache-$side" --json > "$work/$recipe-$side.jsonl" || return 1
            echo "$(( ($(date +%s%N) - start) / 1000000 ))" > "$work/$recipe-$side.ms"
        done
    done
    python3 - "$work" $smoke_recipes > "$work/smoke.json" <<'PY'
import hashlib, json, pathlib, sys
work, recipes = pathlib.Path(sys.argv[1]), sys.argv[2:]
limits = {"auroc": 0.05, "fpr95": 0.10, "id_accuracy": 0.05}
def events(jsonl):
    return [json.loads(l) for l in jsonl.read_text().splitlines() if l.strip()]
def reports(jsonl):
    found = {}
    for e in events(jsonl):
        if e.get("event") in ("finished", "reused") and (pathlib.Path(e["outputs"]) / "report.json").exists():
            found[e["stage"]] = json.loads((pathlib.Path(e["outputs"]) / "report.json").read_text())
    return found
def digests(jsonl):
    found = {}
    for e in events(jsonl):
        if e.get("event") in ("finished", "reused"):
            folder = pathlib.Path(e["outputs"])
            h = hashlib.blake2b()
            for f in sorted(p for p in folder.rglob("*") if p.is_file()):
                h.update(str(f.relative_to(folder)).encode()); h.update(f.read_bytes())
            found[e["stage"]] = h.hexdigest()
    return found
result = {"recipes": {}, "failures": []}
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
    first, second = digests(work / f"{recipe}-gpu.jsonl"), digests(work / f"{recipe}-gpu2.jsonl")
    result["recipes"][recipe] = {
        "worst_difference": worst,
        "gpu_ms": int((work / f"{recipe}-gpu.ms").read_text()), "cpu_ms": int((work / f"{recipe}-cpu.ms").read_text()),
        "second_gpu_run_identical_outputs": sorted(s for s in first if first[s] == second.get(s)),
        "second_gpu_run_different_outputs": sorted(s for s in first if first[s] != second.get(s)),
    }
print(json.dumps(result))
sys.exit(1 if result["failures"] else 0)
PY
}

# bench NAME ARGS…: one bench-train run with GPU utilisation sampled meanwhile.
bench() {
    local name="$1"; shift
    local sampler=""
    if [ "$gpu" != cpu ] && command -v nvidia-smi >/dev/null; then
        nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 200 > "$work/$name.util" 2>/dev/null &
        sampler=$!
    fi
    "$bin" bench-train --device "$gpu" "$@" > "$work/$name.line"
    local rc=$?
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null
    python3 - "$work/$name.line" "$work/$name.util" "$name" >> "$work/bench-rows.jsonl" <<'PY'
import json, os, statistics, sys
line, util, name = sys.argv[1:4]
try:
    run = json.loads(open(line).read().strip().splitlines()[-1])
except Exception as e:
    print(json.dumps({"run": name, "error": str(e)})); sys.exit()
step = statistics.median(run["step_seconds"])
row = {"run": name, "net": run["net"], "batch": run["batch"], "median_step_seconds": step,
       "images_per_second": run["batch"] / step, "host_syncs_per_step": run.get("host_syncs_per_step"),
       "bytes_to_device_per_step": run.get("bytes_to_device_per_step"), "batch_bytes": run.get("batch_bytes"),
       "stage": run.get("stage"), "dropout": run.get("dropout"), "crop_padding": run.get("crop_padding")}
if os.path.exists(util):
    samples = [l.split(",") for l in open(util) if l.strip()]
    try:
        row["gpu_utilisation_mean_percent"] = statistics.mean(float(s[0]) for s in samples)
        row["gpu_memory_max_mib"] = max(float(s[1]) for s in samples)
    except (ValueError, IndexError, statistics.StatisticsError):
        pass
print(json.dumps(row))
PY
    return $rc
}

rows_json() { python3 -c 'import json,sys; print(json.dumps({"rows": [json.loads(l) for l in open(sys.argv[1]) if l.strip()]}))' "$1"; }

batches_phase() {
    : > "$work/bench-rows.jsonl"
    local rc=0 b
    for b in $batches; do bench "batch-$b" --net "$train_net" --batch "$b" --warmup 3 --steps 10 || rc=1; done
    rows_json "$work/bench-rows.jsonl" > "$work/batches.json"
    return $rc
}

fit_phase() {
    : > "$work/bench-rows.jsonl"
    local rc=0
    bench train-dropout-0.3 --net "$fit_net" --batch 64 --warmup 3 --steps 10 --dropout 0.3 || rc=1
    bench train-dropout-0 --net "$fit_net" --batch 64 --warmup 3 --steps 10 --dropout 0 || rc=1
    bench umap --net "$fit_net" --batch 64 --warmup 3 --steps 10 --stage umap || rc=1
    rows_json "$work/bench-rows.jsonl" > "$work/fit-rows.json"
    # ODIN scoring (one input gradient per batch) over 1,280 images of DenseNet-BC-100.
    local odin=""
    if [ "$gpu" != cpu ]; then
        sed -e "s#\${PIPELINE_DATA:-../recipes/data}#$PWD/recipes/data#" -e "s/^device = .*/device = \"$gpu\"/" \
            bench/scoring_densenet.toml > "$work/scoring.toml"
        "$bin" run "$work/scoring.toml" --quiet --only score_odin --cache "$work/cache-scoring" --json > /dev/null &&
            "$bin" run "$work/scoring.toml" --quiet --only score_odin --force score_odin --cache "$work/cache-scoring" \
                --json > "$work/odin.jsonl" && odin="$work/odin.jsonl" || rc=1
    fi
    python3 - "$work/fit-rows.json" "$odin" > "$work/fit.json" <<'PY'
import json, pathlib, sys
result = json.load(open(sys.argv[1]))
if sys.argv[2]:
    for line in open(sys.argv[2]):
        e = json.loads(line)
        if e.get("event") == "finished" and e["stage"].startswith("score_odin"):
            scores = json.loads((pathlib.Path(e["outputs"]) / "scores.json").read_text())
            n = scores["id"]["count"] + sum(o["count"] for o in scores["ood"])
            result["odin_scoring"] = {"images": n, "seconds": e["seconds"], "images_per_second": n / e["seconds"]}
print(json.dumps(result))
PY
    return $rc
}

pytorch_phase() {
    local device=cuda
    [ "$gpu" = cpu ] && device=cpu
    python3 -c "import torch, sys; sys.exit(0 if '$device' == 'cpu' or torch.cuda.is_available() else 1)" 2>/dev/null ||
        { echo '{"skipped": "no PyTorch with CUDA here"}' > "$work/pytorch.json"; return 0; }
    : > "$work/pytorch-rows.jsonl"
    local dropout
    for dropout in 0.3 0; do
        python3 bench/train_vs_pytorch.py worker --net "$fit_net" --batch 64 --warmup 3 --steps 10 --dropout "$dropout" \
            --crop-padding 4 --device "$device" --threads "$(nproc)" >> "$work/pytorch-rows.jsonl" || return 1
    done
    rows_json "$work/pytorch-rows.jsonl" > "$work/pytorch.json"
}

failed=0
if ! phase env 60 env_phase; then
    say "the environment cannot run the binary; stopping (see $log)"
    failed=1
else
    phase first 120 first_phase || failed=1
    phase ops 120 ops_phase || failed=1
    phase smoke 180 smoke_phase || failed=1
    phase batches 120 batches_phase || failed=1
    phase fit 150 fit_phase || failed=1
    phase pytorch 90 pytorch_phase || failed=1
fi

python3 - "$log" "$out/gpu-check.json" <<'PY'
import json, sys
phases = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
summary = {"phases": {p["phase"]: p for p in phases},
           "failed_phases": [p["phase"] for p in phases if p["status"] != "ok"]}
open(sys.argv[2], "w").write(json.dumps(summary, indent=2) + "\n")
print(json.dumps({p["phase"]: p["status"] for p in phases}, indent=2))
PY
rm -rf "$work"
exit "$failed"
