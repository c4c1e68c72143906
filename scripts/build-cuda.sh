#!/usr/bin/env bash
# Builds the CUDA `pipeline` binary on a machine without a GPU and without a system CUDA toolkit
# (issue 5). The CUDA 13.0 compiler and libraries come from PyPI wheels (the ones PyTorch's cu130
# builds depend on); the driver library libcuda.so, which no wheel carries, is replaced at link
# time by a stub generated from cuda.h. The stub never runs: on the GPU machine the driver's
# libcuda.so.1 is loaded.
#
#   bash scripts/build-cuda.sh            # → target/cuda/release/pipeline
#   bash scripts/build-cuda.sh env        # print the build environment as `export` lines
#
# Environment: CUDA_BUILD_DIR (default target/cuda-toolchain), CUDA_COMPUTE_CAP (default 90:
# H100/H200; 80 for A100), PYTHON (default python3). Re-running reuses everything built.
# To run the binary, put the wheels' libraries on the library path: the script prints the line.
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

# A CUDA_HOME of links into the wheels: nvcc finds its helpers next to its real path; the
# linker needs unversioned library names.
rm -rf "$home.new"
mkdir -p "$home.new/lib64/stubs"
for d in bin include nvvm; do ln -s "$cu13/$d" "$home.new/$d"; done
for f in "$cu13"/lib/*.so.* "$cu13"/lib/*.a; do [ -e "$f" ] && ln -s "$f" "$home.new/lib64/$(basename "$f")"; done
for lib in cudart nvrtc curand cublas cublasLt; do
    versioned="$(cd "$cu13/lib" && ls "lib$lib.so."* | grep -v -e builtins -e '\.alt\.' | head -1)"
    ln -s "$cu13/lib/$versioned" "$home.new/lib64/lib$lib.so"
done
# The driver-API link stub: an empty function for every cu* function cuda.h declares (after
# the preprocessor, so the versioned names such as cuMemAlloc_v2 are the ones listed).
stub="$work/libcuda-stub"
mkdir -p "$stub"
if [ ! -f "$stub/libcuda.so" ] || [ "$cu13/include/cuda.h" -nt "$stub/libcuda.so" ]; then
    say "generating the libcuda.so link stub"
    gcc -E -P -I"$cu13/include" "$cu13/include/cuda.h" | tr '\n' ' ' \
        | grep -oE '\bcu[A-Z][A-Za-z0-9_]*[[:space:]]*\(' | sed 's/[[:space:]]*($//' | sort -u > "$stub/symbols.txt"
    sed 's/.*/void &(void) {}/' "$stub/symbols.txt" > "$stub/stub.c"
    gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stub/libcuda.so" "$stub/stub.c"
fi
cp "$stub/libcuda.so" "$home.new/lib64/stubs/libcuda.so"
rm -rf "$home"
mv "$home.new" "$home"

export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home"
export PATH="$home/bin:$PATH" NVCC="$home/bin/nvcc"
export CUDARC_CUDA_VERSION=13000
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export LIBRARY_PATH="$home/lib64:$home/lib64/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
if [ "$mode" = env ]; then
    for v in CUDA_HOME CUDA_PATH CUDA_ROOT PATH NVCC CUDARC_CUDA_VERSION CUDA_COMPUTE_CAP LIBRARY_PATH; do
        printf 'export %s=%q\n' "$v" "${!v}"
    done
    exit 0
fi

say "$("$NVCC" --version | grep release), compute capability $CUDA_COMPUTE_CAP"
CARGO_TARGET_DIR="$PWD/target/cuda" cargo build --release --locked --features cuda --bin pipeline
binary="$PWD/target/cuda/release/pipeline"
needed="$(readelf -d "$binary" | grep NEEDED || true)"
for lib in libcuda.so.1 libcublas.so; do
    grep -q "$lib" <<<"$needed" || { say "$binary does not link $lib: not a CUDA build"; exit 1; }
done
say "built $binary ($(du -h "$binary" | cut -f1))"
say "run it with: LD_LIBRARY_PATH=$cu13/lib $binary run RECIPE"
echo "$binary"
