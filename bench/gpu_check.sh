#!/usr/bin/env bash
# One-call GPU check for a fresh H100/H200 machine with no package registry: install cnnfast (building
# the extension when the tree has one), run the test suite on cuda, run compute-sanitizer (memcheck,
# racecheck) on a few small kernel calls, run the benchmarks; every log and result goes to OUTDIR.
#
#   bash bench/gpu_check.sh OUTDIR [SECONDS]          # SECONDS: the whole run's budget, default 560
#
# Time plan (caps; a phase that ends early leaves its time to the benchmarks, which get the rest):
#   install + build  ≤ 180 s   pip install -e . offline (builds cnnfast._C if setup.py has it)
#   tests            ≤ 200 s   pytest on cuda; SIGINT at the cap, so pytest still prints its summary
#   sanitizer        ≤ 60 s each, memcheck then racecheck, on python -m cnnfast.bench.sanitize
#   benchmarks       the rest, at least 150 s kept for them; cases stop 60 s before the end
# Environment: PYTHON (default python3), PHASES (default "install tests sanitizer bench"),
# BENCH_ARGS (default below), CNNFAST_COMMIT (recorded when the tree has no .git).
# OUTDIR holds at most 8 files, two folders deep (what the device tool brings back):
#   summary.txt, build-and-test.log, sanitizer.log, bench.log, bench/<tag>.{json,md}, bench/<tag>-*.png
set -u
OUT=${1:?usage: bash bench/gpu_check.sh OUTDIR [SECONDS]}
TOTAL=${2:-560}
PY=${PYTHON:-python3}
PHASES=${PHASES:-install tests sanitizer bench}
BENCH_ARGS=${BENCH_ARGS:---suite net,models --batch 64,256,4096 --layout nchw --dtype tf32,bfloat16 --tag gpu-check}
BENCH_MIN=150
mkdir -p "$OUT/bench" && OUT=$(cd "$OUT" && pwd) || exit 1
REPO=$(cd "$(dirname "$0")/.." && pwd) || exit 1
cd "$REPO" || exit 1
SUMMARY=$OUT/summary.txt
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
START=$SECONDS

left() { echo $((TOTAL - (SECONDS - START))); }
wants() { [[ " $PHASES " == *" $1 "* ]]; }

# phase NAME CAP RESERVE LOG CMD...: run CMD with a limit of CAP seconds, or less so that RESERVE
# seconds stay for the phases after it; one line of the summary says how it went.
phase() {
  local name=$1 cap=$2 reserve=$3 log=$4; shift 4
  local limit=$(( $(left) - reserve )); (( limit > cap )) && limit=$cap
  if (( limit < 15 )); then
    printf '%-10s skipped: no time left\n' "$name" | tee -a "$SUMMARY"; return 1
  fi
  printf '\n===== %s: %s (limit %d s)\n' "$name" "$*" >>"$log"
  local t0=$SECONDS rc
  timeout -s INT -k 15 "$limit" "$@" >>"$log" 2>&1; rc=$?
  local how="ok"; (( rc == 124 )) && how="TIMED OUT" || { (( rc != 0 )) && how="FAILED (exit $rc)"; }
  printf '%-10s %-16s %4d s of %4d s   %s\n' "$name" "$how" $((SECONDS - t0)) "$limit" "$log" | tee -a "$SUMMARY"
  return $rc
}

{
  echo "cnnfast GPU check, $(date -u +%FT%TZ), budget $TOTAL s, phases: $PHASES"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1
  "$PY" -c 'import sys, torch, triton; print("python", sys.version.split()[0], "| torch", torch.__version__,
    "| triton", triton.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(),
    "| gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1
  nvcc --version 2>&1 | tail -1
  compute-sanitizer --version 2>&1 | head -1
  echo
} | tee "$SUMMARY"

if wants install; then
  if [ -d csrc ]; then echo "csrc/ present: the install builds the extension cnnfast._C" | tee -a "$SUMMARY"
  else echo "csrc/ absent: no extension to build, skipped (pure-Python install)" | tee -a "$SUMMARY"; fi
  phase install 180 $((BENCH_MIN + 60)) "$OUT/build-and-test.log" \
    "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . \
    || echo "install failed: later phases use whatever cnnfast is importable" | tee -a "$SUMMARY"
fi
# Without an install (failed, or not among PHASES on this fresh machine), run from a copy of the tree laid
# out as the installed package, from inside that copy (the checkout's own cnnfast/ would shadow it).
if ! "$PY" -c 'import cnnfast.kernels, cnnfast.bench' 2>/dev/null; then
  shim=/tmp/cnnfast-shim && rm -rf "$shim" && mkdir -p "$shim" && cp -r cnnfast "$shim/" \
    && cp -r kernels "$shim/cnnfast/kernels" && cp -r bench "$shim/cnnfast/bench" && cd "$shim" \
    && echo "cnnfast not installed: running from a copy of the tree in $shim" | tee -a "$SUMMARY"
fi
"$PY" -c 'import cnnfast; print("cnnfast backends on cuda:", cnnfast.backends.available("cuda"))' 2>&1 \
  | tee -a "$SUMMARY"
# Registers and spills of the extension's CUDA kernels as built here (cuobjdump; seconds).
"$PY" -m cnnfast.bench.cuda_kernels 2>&1 | grep -E 'sm_90|kernels;' >>"$SUMMARY"
if wants tests; then
  phase tests 200 $((BENCH_MIN + 60)) "$OUT/build-and-test.log" \
    "$PY" -m pytest -q -p no:cacheprovider --durations=10 -rfE --rootdir "$REPO" "$REPO/tests"
  grep -E '^(FAILED|ERROR|[0-9]+ (passed|failed|error|skipped))|(passed|failed|error).* in [0-9.]+s' \
    "$OUT/build-and-test.log" | tail -15 | tee -a "$SUMMARY"
fi
if wants sanitizer; then
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1   # real allocation bounds for memcheck
  for tool in memcheck racecheck; do
    phase "$tool" 60 "$BENCH_MIN" "$OUT/sanitizer.log" compute-sanitizer --tool "$tool" --error-exitcode 9 \
      "$PY" -m cnnfast.bench.sanitize
    grep -E '^(=+ (ERROR SUMMARY|RACECHECK SUMMARY).*|sanitize:.*)' "$OUT/sanitizer.log" | tail -2 | tee -a "$SUMMARY"
  done
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi
if wants bench; then
  budget=$(( $(left) - 60 ))
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
  phase bench 100000 5 "$OUT/bench.log" "$PY" -m cnnfast.bench $BENCH_ARGS --budget "$budget" --out "$OUT/bench"
  sed -n '/^== /,$p' "$OUT/bench.log" | tail -60
fi
echo "total $((SECONDS - START)) s; logs and results in $OUT" | tee -a "$SUMMARY"
echo; cat "$SUMMARY"
