#!/usr/bin/env bash
# Engine time of a fully cached 2,001-instance sweep (bench/sweep_2000.toml): computes it once,
# then prints the wall time of three cached `run`s and `plan`s (release build).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/pipeline
cache=${CACHE:-target/bench-sweep-cache}
"$bin" run bench/sweep_2000.toml --cache "$cache" --jobs 2 --quiet
"$bin" plan bench/sweep_2000.toml --cache "$cache" --json | python3 -c 'import json,sys; d=json.load(sys.stdin); print("instances:", len(d["instances"]), "cached:", d["cached"])'
for i in 1 2 3; do
  /usr/bin/time -f "cached run: %e s wall, %M KB max RSS" "$bin" run bench/sweep_2000.toml --cache "$cache" --quiet
done
for i in 1 2 3; do
  /usr/bin/time -f "plan: %e s wall" "$bin" plan bench/sweep_2000.toml --cache "$cache" > /dev/null
done
