#!/usr/bin/env bash
# Builds the CUDA `pipeline` binary on a machine without a GPU and without a system CUDA toolkit
# (issues 5 and 17). The CUDA 13.0 compiler and libraries come from PyPI wheels (the ones
# PyTorch's cu130 builds depend on).
#
# The binary loads the CUDA libraries (the driver's libcuda.so.1, cuBLAS, cuRAND, NVRTC) at run
# time, when a recipe first asks for a GPU, instead of linking them: it starts on any Linux
# machine, such as a login node or a CI runner without the NVIDIA driver, runs on the CPU there
# (device "auto" says so; "cuda" is a clear error), and uses the GPU where there is one.
# candle-core 0.11 asks cudarc for `dynamic-linking`, which cannot be combined with cudarc's
# `dynamic-loading`, so this script builds against a copy of candle-core whose manifest asks
# for `dynamic-loading` instead (a Cargo `[patch]` given on the command line). The copy and
# the patched lock file live under the build folder; nothing in the repository changes.
#
#   bash scripts/build-cuda.sh            # → target/cuda/release/pipeline
#   bash scripts/build-cuda.sh env        # print the build environment as `export` lines
#   bash scripts/build-cuda.sh check      # clippy over the CUDA build's code, no binary
#
# Environment: CUDA_BUILD_DIR (default target/cuda-toolchain), CUDA_COMPUTE_CAP (default 90:
# H100/H200; 80 for A100), PYTHON (default python3), CUDA_CUDNN=0 (no cuDNN wheel: the
# binary then uses candle's convolution). Re-running reuses everything built.
# To run the binary on a GPU machine, put the wheels' libraries on the library path: the
# script prints the line.
set -euo pipefail
cd "$(dirname "$0")/.."
work="${CUDA_BUILD_DIR:-$PWD/target/cuda-toolchain}"
mode="${1:-build}"
python="${PYTHON:-python3}"
venv="$work/venv"
home="$work/cuda-home"
mkdir -p "$work"
say() { printf 'build-cuda: %s\n' "$*" >&2; }

# nvcc must stay at 13.0: the CUDA 13.0 driver (580) cannot JIT PTX from a newer compiler.
toolkit='cuda-toolkit[nvcc,crt,nvvm,cccl,cudart,cublas,curand,nvrtc]==13.0.2'
if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    "$python" -m venv "$venv"
fi
if ! "$venv/bin/pip" list --format=freeze 2>/dev/null | grep -qx 'cuda-toolkit==13.0.2'; then
    say "installing $toolkit from PyPI"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$toolkit"
fi
cu13="$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13"))')"
[ -x "$cu13/bin/nvcc" ] || { say "no nvcc under $cu13"; exit 1; }
# cuDNN for the convolutions (loaded at run time where present; the build does not need it):
# PyTorch's cu130 wheels depend on this one. CUDA_CUDNN=0 leaves out its 516 MB download.
cudnn='nvidia-cudnn-cu13==9.28.1.4'
runtime_libs="$cu13/lib"
if [ "${CUDA_CUDNN:-1}" != 0 ] && [ "$mode" = build ]; then
    if ! "$venv/bin/pip" list --format=freeze 2>/dev/null | grep -qx "$cudnn"; then
        say "installing $cudnn from PyPI"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps "$cudnn"
    fi
    runtime_libs="$runtime_libs:$("$venv/bin/python" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cudnn", "lib"))')"
fi

# A CUDA_HOME of links into the wheels: nvcc finds its helpers next to its real path; the
# linker needs unversioned library names.
rm -rf "$home.new"
mkdir -p "$home.new/lib64"
for d in bin include nvvm; do ln -s "$cu13/$d" "$home.new/$d"; done
for f in "$cu13"/lib/*.so.* "$cu13"/lib/*.a; do [ -e "$f" ] && ln -s "$f" "$home.new/lib64/$(basename "$f")"; done
for lib in nvrtc curand cublas cublasLt; do
    versioned="$(cd "$cu13/lib" && ls "lib$lib.so."* | grep -v -e builtins -e '\.alt\.' | head -1)"
    ln -s "$cu13/lib/$versioned" "$home.new/lib64/lib$lib.so"
done
# candle-kernels links `-lcudart` for its statically compiled kernels. A linker script in its
# place makes that the static CUDA runtime, which loads the driver only when first called, so
# the binary needs no CUDA library to start.
printf 'GROUP ( %s )\n' "$cu13/lib/libcudart_static.a" > "$home.new/lib64/libcudart.so"
rm -rf "$home"
mv "$home.new" "$home"

export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home"
export PATH="$home/bin:$PATH" NVCC="$home/bin/nvcc"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$home/lib64${LIBRARY_PATH:+:$LIBRARY_PATH}"
if [ "$mode" = env ]; then
    for v in CUDA_HOME CUDA_PATH CUDA_ROOT PATH NVCC CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP LIBRARY_PATH; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

say "$("$NVCC" --version | grep release), compute capability $CUDA_COMPUTE_CAP"

# candle-core with cudarc's `dynamic-loading` in place of `dynamic-linking`.
candle_src="$(cargo metadata --locked --format-version 1 | "$python" -c '
import json, sys
meta = json.load(sys.stdin)
print(next(p["manifest_path"] for p in meta["packages"] if p["name"] == "candle-core").rsplit("/", 1)[0])')"
patched="$work/candle-core-dynamic-loading/$(basename "$candle_src")"
if [ ! -f "$patched/.patched" ]; then
    rm -rf "$patched"
    mkdir -p "$(dirname "$patched")"
    cp -a "$candle_src" "$patched"
    "$python" - "$patched/Cargo.toml" <<'PY'
import re, sys
path = sys.argv[1]
text = open(path).read()
section = re.search(r'^\[dependencies\.cudarc\]\n(?:[^\[\n].*\n|\n)*', text, re.M)
if not section or '"dynamic-linking"' not in section.group(0):
    sys.exit(f"build-cuda: {path}: no `dynamic-linking` in [dependencies.cudarc]; has candle-core changed?")
fixed = section.group(0).replace('"dynamic-linking"', '"dynamic-loading"')
open(path, "w").write(text[:section.start()] + fixed + text[section.end():])
PY
    touch "$patched/.patched"
fi

# The workspace as it is now (tracked and new files, modification times kept so that Cargo
# rebuilds only what changed), built with the patch; its lock file differs only in
# candle-core's source.
src="$work/src"
rm -rf "$src"
mkdir -p "$src"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$src"
if [ "$mode" = check ]; then
    # Type-checks the CUDA code paths (this crate's kernels' launchers, the cuDNN calls) with
    # clippy, without building the binary.
    (cd "$src" && CARGO_TARGET_DIR="$OLDPWD/target/cuda" cargo clippy --release --features cuda-dynamic-loading \
        --workspace --config "patch.crates-io.candle-core.path=\"$patched\"" -- -D warnings)
    exit $?
fi
(cd "$src" && CARGO_TARGET_DIR="$OLDPWD/target/cuda" cargo build --release --features cuda-dynamic-loading \
    --bin pipeline --config "patch.crates-io.candle-core.path=\"$patched\"")
binary="$PWD/target/cuda/release/pipeline"
needed="$(readelf -d "$binary" | grep NEEDED || true)"
for lib in libcuda libcudart libcublas libcublasLt libcurand libnvrtc; do
    if grep -q "\[$lib\.so" <<<"$needed"; then
        say "$binary links $lib at load time: it would not start without it"
        exit 1
    fi
done
grep -qa 'cublasLt' "$binary" || { say "$binary has no CUDA support in it"; exit 1; }
say "built $binary ($(du -h "$binary" | cut -f1)); it loads the CUDA libraries at run time"
say "run it on a GPU machine with: LD_LIBRARY_PATH=$runtime_libs $binary run RECIPE"
echo "$binary"
