#!/usr/bin/env bash
# Wall time of the smoke recipes on the local executor and under `--executor slurm` (each stage a
# job) on the cluster SLURM_CONF names (e.g. `eval "$(bash scripts/slurm-cluster.sh start)"`),
# fresh caches each time: the difference is the per-job overhead (sbatch, scheduling, the worker
# starting and reading its recipe and upstream entries, the squeue poll).
#
#   bash bench/slurm_overhead.sh [RECIPE…]     # default: recipes/smoke/*.toml
#   POLL_SECONDS=0.5 bash bench/slurm_overhead.sh   # another [executor.slurm] poll_seconds (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --quiet --bin pipeline
bin="$PWD/target/release/pipeline"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Site settings for the small CI node, as a pipeline.toml (the recipes stay as they are).
cat >"$work/pipeline.toml" <<TOML
[executor.slurm]
defaults = { cpus = 1, mem = "1G", time = "0:30:00" }
poll_seconds = ${POLL_SECONDS:-2}
TOML
recipes=("$@")
[ ${#recipes[@]} -gt 0 ] || recipes=(recipes/smoke/*.toml)
printf '| recipe | instances | local s | slurm s | overhead per instance s |\n|---|---|---|---|---|\n'
for recipe in "${recipes[@]}"; do
    path="$(realpath "$recipe")"
    name="$(basename "$recipe" .toml)"
    start=$(date +%s%N)
    (cd "$work" && "$bin" run "$path" --quiet --cache "$work/local-$name")
    local_ns=$(( $(date +%s%N) - start ))
    start=$(date +%s%N)
    (cd "$work" && "$bin" run "$path" --quiet --executor slurm --cache "$work/slurm-$name")
    slurm_ns=$(( $(date +%s%N) - start ))
    n=$(ls "$work/slurm-$name/objects" | wc -l)
    diff -r <(cd "$work/local-$name/objects" && find . -path '*/out/*' -type f -exec sha256sum {} + | sort) \
        <(cd "$work/slurm-$name/objects" && find . -path '*/out/*' -type f -exec sha256sum {} + | sort) >/dev/null \
        || { echo "outputs differ for $recipe" >&2; exit 1; }
    awk -v r="$name" -v n="$n" -v l="$local_ns" -v s="$slurm_ns" \
        'BEGIN { printf "| %s | %d | %.1f | %.1f | %.2f |\n", r, n, l / 1e9, s / 1e9, (s - l) / 1e9 / n }'
done
