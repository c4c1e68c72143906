#!/usr/bin/env bash
# Scoring throughput per method, and the report's render time:
#   bench/scoring.sh [CACHE_DIR] [RECIPE]   (RECIPE: bench/scoring.toml, or scoring_densenet.toml)
# Trains the base model of bench/scoring.toml if the cache lacks it (a few minutes), then
# recomputes the score and report stages and prints images per second for each method.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${1:-.pipeline-cache}"
recipe="${2:-bench/scoring.toml}"
cargo build --release --quiet
bin=target/release/pipeline
$bin run "$recipe" --cache "$cache" --quiet
forced=()
for stage in score_msp score_energy score_odin score_mahalanobis score_maxlogit score_gen score_gradnorm \
    score_ash_p score_ash_b score_ash_s score_react score_knn score_dice score_kl_matching score_vim score_rmds table; do
    forced+=(--force "$stage")
done
$bin run "$recipe" --cache "$cache" --json --quiet "${forced[@]}" > /tmp/pipeline-bench-scoring.jsonl
python3 - /tmp/pipeline-bench-scoring.jsonl <<'PY'
import json, pathlib, sys
events = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
for e in events:
    if e.get("event") != "finished":
        continue
    out = pathlib.Path(e["outputs"])
    index = out / "scores.json"
    if index.exists():
        s = json.loads(index.read_text())
        n = s["id"]["count"] + sum(o["count"] for o in s["ood"])
        print(f"{s['methods'][0]:<12} {n} images in {e['seconds']:.2f} s: {n / e['seconds']:.0f} images/s")
    elif (out / "report.html").exists():
        print(f"report       rendered (json, csv, md, html) in {e['seconds'] * 1000:.0f} ms")
PY
