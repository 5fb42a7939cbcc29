#!/usr/bin/env bash
# Build cnnfast._C on a machine without a GPU, for another machine's Python and torch, into DIR (default
# prebuilt/ at the repository root); bench/gpu_check.sh takes it from there instead of building.
#
#   PYTHON=/path/to/python3.12 bash bench/prebuilt.sh [DIR]
#
# PYTHON must have the GPU machine's Python minor version and exactly its torch (torch.__version__; the
# extension links against that torch's C++ symbols), plus setuptools and ninja; nvcc must be on PATH or
# in CUDA_HOME. CNNFAST_CUDA_ARCHS (default "90", the H100/H200's sm_90) picks the GPU code built; MAX_JOBS
# the parallel compile jobs (setup.py's default otherwise). Debug sections are stripped (what remains:
# the CPU code and the sm_90 cubins with their PTX). DIR then holds _C<ABI suffix>.so and BUILD_INFO.json
# (Python, torch, architectures, and a digest of setup.py and csrc/ that bench/gpu_check.sh compares).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
DIR=${1:-$REPO/prebuilt}
export CNNFAST_CUDA_ARCHS=${CNNFAST_CUDA_ARCHS:-90} CNNFAST_REQUIRE_EXTENSION=1
mkdir -p "$DIR" && DIR=$(cd "$DIR" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
cd "$REPO"
"$PY" -c 'import torch, sys; assert torch.version.cuda, "this torch has no CUDA"; print("building for python",
  sys.version.split()[0], "torch", torch.__version__, "sm_" + " sm_".join(sys.argv[1].split(";")))' "$CNNFAST_CUDA_ARCHS"
"$PY" setup.py --quiet build_ext --build-lib "$TMP/lib" --build-temp "$TMP/build"
name=$("$PY" "$REPO/bench/gpu_check_helpers.py" extension-name)
rm -f "$DIR"/_C*.so "$DIR/BUILD_INFO.json"
strip --strip-debug -o "$DIR/$name" "$TMP/lib/cnnfast/$name"
# It must load with this torch (an undefined symbol is an ImportError) and hold GPU code (has_cuda() also
# needs a device, so the section is looked for instead).
"$PY" -c 'import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("cnnfast._C", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))' "$DIR/$name"
readelf -S "$DIR/$name" | grep -q nv_fatbin || { echo "$DIR/$name holds no CUDA code" >&2; exit 1; }
"$PY" "$REPO/bench/gpu_check_helpers.py" write-info "$DIR" "$CNNFAST_CUDA_ARCHS"
ls -l "$DIR"
