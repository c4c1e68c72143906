#!/usr/bin/env bash
# Engine cost of large recipes (issue 32): wall time and peak memory of `check --no-data`,
# `plan`, `status` and `dag --json` at 10^3 … 10^6 instances, for one swept stage (`sweep`),
# sweeps crossed between two stages (`cross`) and a chain of stages (`chain`); then the
# refusals: a sweep and a chain one size past the default limit (100,000 instances).
# Prints a Markdown table (release build). Usage: bash bench/recipe_scale.sh [MAX_EXPONENT]
set -uo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=$PWD/target/release/pipeline
max=${1:-6}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cache="$work/cache"

measure() { # label recipe command...
  local label=$1 recipe=$2; shift 2
  local cache_flag=()
  case "$1" in plan|status|run) cache_flag=(--cache "$cache") ;; esac
  /usr/bin/time -o "$work/time" -f "%e %M %x" "$bin" "$@" "$recipe" "${cache_flag[@]}" > /dev/null 2> "$work/err"
  tail -1 "$work/time" | awk -v l="$label" '{ printf "| %s | %.2f s | %.0f MB | %s |\n", l, $1, $2 / 1024, $3 }'
}

echo "| recipe, command | wall | peak memory | exit |"
echo "|---|---|---|---|"
for e in $(seq 3 "$max"); do
  n=$((10 ** e))
  python3 bench/recipe_scale.py sweep "$n" > "$work/sweep.toml"
  a=$(python3 -c "import math; print(int(math.isqrt($n)))")
  python3 bench/recipe_scale.py cross "$a" "$a" > "$work/cross.toml"
  python3 bench/recipe_scale.py chain "$n" > "$work/chain.toml"
  for kind in sweep cross chain; do
    if [ "$kind" = chain ] && [ "$e" -gt 5 ]; then continue; fi
    for cmd in "check --no-data" plan status "dag --json"; do
      # shellcheck disable=SC2086
      measure "$kind 10^$e, $cmd" "$work/$kind.toml" $cmd
    done
  done
done
# Refusals: one past the default limit (no max_instances), and a 10^6-stage chain.
python3 bench/recipe_scale.py sweep 100001 | grep -v max_instances > "$work/over.toml"
measure "sweep 100,001 without max_instances, check --no-data (refused)" "$work/over.toml" check --no-data
python3 bench/recipe_scale.py cross 1000 1000 | grep -v max_instances > "$work/over.toml"
measure "cross 1,000 × 1,000 without max_instances, check --no-data (refused)" "$work/over.toml" check --no-data
python3 bench/recipe_scale.py chain 1000000 | grep -v max_instances > "$work/over.toml"
measure "chain 10^6 without max_instances, check --no-data (refused)" "$work/over.toml" check --no-data
