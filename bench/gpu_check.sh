#!/usr/bin/env bash
# One-call GPU check for a fresh H100/H200 machine with no package registry, most valuable figures first,
# so that a run cut off at any point has kept what it finished:
#   1. the extension cnnfast._C: a matching prebuilt one (bench/prebuilt.sh makes it on a CPU machine),
#      else built for the GPU found here alone (CNNFAST_CUDA_ARCHS from its compute capability) on every core;
#   2. the headline benchmarks, one `cnnfast bench` run per suite, each writing its JSON and Markdown as it
#      ends: the Net's fused blocks (forward, forward+backward; batch 256/1024/4096; float32 with TF32 on and
#      off, bfloat16), the Net's training step (batch 256, 4096), ResNet-18's convolutions in bfloat16,
#      channels_last then NCHW;
#   3. the test suite on cuda under a time cap (SIGINT at the cap: pytest still prints its summary);
#   4. compute-sanitizer memcheck (the extension's CUDA kernels, then Triton's) and racecheck (the CUDA
#      kernels, whose shared memory is hand-managed).
# One summary line per phase, after the versions, GPU, driver and commit.
#
#   bash bench/gpu_check.sh [--dry-run] OUTDIR [SECONDS]     # SECONDS: the whole run, default 530
#
# --dry-run (or GPU_CHECK_DRY_RUN=1), and any run on a machine without a GPU: every step that needs no GPU
# runs (versions, the prebuilt check, the installed package, each suite's case list, two harness tests,
# the sanitizer's call list, the summary, the OUTDIR limits); the others say "skipped"; exit 0 only if
# all of that worked. A real run exits 0 when no phase failed (a phase cut at its cap is not a failure).
#
# Time: each phase runs under a cap, shortened so the phases after it keep their share. The benchmarks get
# what the extension leaves minus TESTS_S + MEMCHECK_S + RACECHECK_S + 10 s, split among the suites by their
# shares (a suite that ends early leaves its time to the next); each suite starts no case in its last 30 s.
# Environment: PYTHON (default python3), PHASES (default "extension bench tests sanitizer"), SUITES (names
# below), BENCH_EXTRA (more `cnnfast bench` arguments for every suite), EXT_S (150), TESTS_S (100),
# MEMCHECK_S (40), RACECHECK_S (35), CNNFAST_PREBUILT (default prebuilt/), CNNFAST_COMMIT (recorded when
# the tree has no .git).
# OUTDIR gets at most 8 files, one folder down (what the device machine's tool brings back):
#   summary.txt, log.txt (every phase's output), bench/<suite>.json, bench/<suite>.md
set -u
DRY=${GPU_CHECK_DRY_RUN:-0}
if [[ ${1:-} == --dry-run ]]; then DRY=1; shift; fi
OUT=${1:?usage: bash bench/gpu_check.sh [--dry-run] OUTDIR [SECONDS]}
TOTAL=${2:-530}
PY=${PYTHON:-python3}
PHASES=${PHASES:-extension bench tests sanitizer}
EXT_S=${EXT_S:-150} TESTS_S=${TESTS_S:-100} MEMCHECK_S=${MEMCHECK_S:-40} RACECHECK_S=${RACECHECK_S:-35}
AFTER_BENCH=$((TESTS_S + MEMCHECK_S + RACECHECK_S + 10))
# Suites: name, share of the benchmark time, `cnnfast bench` arguments (cases run in the order listed).
# torch.compile runs in its default mode: max-autotune benchmarks Triton templates against cuDNN for every
# convolution and takes minutes per suite, more than this whole call. A lone convolution compiles to the
# same cuDNN call eager makes, so the ResNet-18 convolutions leave torch.compile out.
SUITE_DEFS=(
  "net-blocks 40 --suite net --op conv_relu_maxpool2d --batch 256,1024,4096 --dtype tf32,bfloat16,float32 --layout nchw"
  "net-train 25 --suite models --op net_train_step --batch 256,4096 --dtype tf32,bfloat16,float32 --layout nchw"
  "resnet18-convs 35 --suite resnet18 --op conv2d --batch 128 --dtype bfloat16 --layout channels_last,nchw
   --providers eager,cnnfast:triton,cnnfast:cuda,cnnfast:torch,cnnfast:auto"
)
SUITES=${SUITES:-net-blocks net-train resnet18-convs} BENCH_EXTRA=${BENCH_EXTRA:-}
BENCH_COMMON="--compile-mode default --formats json,md"
mkdir -p "$OUT/bench" && OUT=$(cd "$OUT" && pwd) || exit 1
REPO=$(cd "$(dirname "$0")/.." && pwd) || exit 1
cd "$REPO" || exit 1
SUMMARY=$OUT/summary.txt LOG=$OUT/log.txt HELPERS=$REPO/bench/gpu_check_helpers.py
PREBUILT=${CNNFAST_PREBUILT:-$REPO/prebuilt}
: >"$SUMMARY"; : >"$LOG"
export PYTHONUNBUFFERED=1
START=$SECONDS FAILED=0

left() { echo $((TOTAL - (SECONDS - START))); }
wants() { [[ " $PHASES " == *" $1 "* ]]; }
say() { echo "$*" | tee -a "$SUMMARY"; }
line() { printf '%-22s %s\n' "$1" "$2" | tee -a "$SUMMARY"; }

# phase NAME CAP RESERVE CMD...: CMD with a limit of CAP seconds, or less so that RESERVE seconds stay for
# the phases after it; its output goes to the log, one summary line says how it went.
phase() {
  local name=$1 cap=$2 reserve=$3; shift 3
  local limit=$(( $(left) - reserve )); (( limit > cap )) && limit=$cap
  if (( limit < 15 )); then line "$name" "skipped: no time left"; return 1; fi
  printf '\n===== %s: %s (limit %d s)\n' "$name" "$*" "$limit" >>"$LOG"
  local t0=$SECONDS rc
  timeout -s INT -k 15 "$limit" "$@" >>"$LOG" 2>&1; rc=$?
  local how="ok"
  if (( rc == 124 )); then how="TIMED OUT"
  elif (( rc != 0 )); then how="FAILED (exit $rc)"; FAILED=$((FAILED + 1)); fi
  line "$name" "$(printf '%-16s %4d s of %4d s' "$how" $((SECONDS - t0)) "$limit")"
  return $rc
}

# --- versions, GPU, driver, commit -------------------------------------------------------------------
commit=$(git -C "$REPO" rev-parse HEAD 2>/dev/null) \
  && [ -n "$(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null)" ] && commit+="+dirty"
commit=${commit:-${CNNFAST_COMMIT:-unknown (no .git here: set CNNFAST_COMMIT)}}
say "cnnfast GPU check, $(date -u +%FT%TZ), budget $TOTAL s, phases: $PHASES$( ((DRY)) && echo ' (dry run)')"
say "commit $commit"
if command -v nvidia-smi >/dev/null; then
  say "gpu $(nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap,clocks.max.sm \
    --format=csv,noheader 2>&1 | head -1) (name, driver, memory, compute capability, max SM clock)"
else say "gpu: nvidia-smi not found"; fi
say "$(timeout 120 "$PY" -c 'import sys, torch, numpy; import triton
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__, "| numpy",
      numpy.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version(), "| device",
      torch.cuda.get_device_name() if torch.cuda.is_available() else None)' 2>&1 | tail -1)"
say "nvcc: $(nvcc --version 2>&1 | tail -1); compute-sanitizer: $({ compute-sanitizer --version 2>/dev/null \
  || echo 'not found'; } | tail -1); $(nproc) CPUs"
CC=""
if (( ! DRY )); then
  CC=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
  [[ $CC =~ ^[0-9]+\.[0-9]+$ ]] || CC=$(timeout 120 "$PY" -c 'import torch
print("%d.%d" % torch.cuda.get_device_capability() if torch.cuda.is_available() else "")' 2>/dev/null)
fi
[[ $CC =~ ^[0-9]+\.[0-9]+$ ]] || CC=""
ARCH=${CC/./}
NOGPU=$( ((DRY)) && echo "skipped: dry run, no GPU used" || echo "skipped: no GPU")
[ -n "$CC" ] || DRY=1
say "compute capability: ${CC:-none}"
say ""

# --- 1. the extension --------------------------------------------------------------------------------
installed() { "$PY" -c 'import cnnfast.kernels, cnnfast.bench' 2>/dev/null; }
with_cuda() { "$PY" -c 'import cnnfast._C as C; assert C.has_cuda(), "built without CUDA kernels"' >>"$LOG" 2>&1; }
if wants extension && (( DRY )); then
  line prebuilt "$("$PY" "$HELPERS" check-prebuilt "$PREBUILT" 2>&1 | tail -1)"
  line extension "$NOGPU; it would build with CNNFAST_CUDA_ARCHS=<compute capability> MAX_JOBS=$(nproc)"
  installed && how="installed package: ok" || { how="FAILED: cnnfast is not importable"; FAILED=$((FAILED + 1)); }
  line package "$how"
elif wants extension; then
  ext="" msg=$("$PY" "$HELPERS" check-prebuilt "$PREBUILT" "$ARCH" 2>&1 | tail -1)
  line prebuilt "$msg"
  if [[ $msg == *": matches"* ]]; then
    rm -f cnnfast/_C*.so
    phase "extension prebuilt" 60 0 bash -c 'cp "$1"/_C*.so cnnfast/ && CNNFAST_NO_EXTENSION=1 "$2" -m pip install \
      --no-index --no-deps --no-build-isolation -e .' _ "$PREBUILT" "$PY" && with_cuda && ext=prebuilt
    [ -n "$ext" ] || line "extension prebuilt" "does not load here (see the log): building instead"
  fi
  if [ -z "$ext" ]; then
    rm -f cnnfast/_C*.so
    phase "extension build" "$EXT_S" $((AFTER_BENCH + 60)) env CNNFAST_CUDA_ARCHS="$CC" MAX_JOBS="$(nproc)" \
      CNNFAST_REQUIRE_EXTENSION=1 "$PY" -m pip install --no-index --no-deps --no-build-isolation -e . \
      && with_cuda && ext=built
  fi
  if [ -z "$ext" ]; then
    rm -f cnnfast/_C*.so
    phase "install pure-Python" 60 0 env CNNFAST_NO_EXTENSION=1 "$PY" -m pip install --no-index --no-deps \
      --no-build-isolation -e . && line extension "none: later phases run without the cuda backend"
  fi
fi
# Not installed (failed, or not among PHASES on this fresh machine): run from a copy of the tree laid out
# as the installed package, from inside that copy (the checkout's own cnnfast/ would shadow it).
if ! installed; then
  shim=/tmp/cnnfast-shim && rm -rf "$shim" && mkdir -p "$shim" && cp -r cnnfast "$shim/" \
    && cp -r kernels "$shim/cnnfast/kernels" && cp -r bench "$shim/cnnfast/bench" && cd "$shim" \
    && line package "not installed: running from a copy of the tree in $shim"
fi
line backends "$("$PY" -c 'import cnnfast; print("cuda:", cnnfast.backends.available("cuda"), "| cpu:",
  cnnfast.backends.available("cpu"))' 2>&1 | tail -1)"
# Registers and spills of the extension's CUDA kernels as built (cuobjdump; seconds).
printf '\n===== cuda kernels\n' >>"$LOG"
line "cuda kernels" "$(timeout 60 "$PY" -m cnnfast.bench.cuda_kernels 2>&1 | tee -a "$LOG" | tail -1)"
say ""

# --- 2. the headline benchmarks ----------------------------------------------------------------------
if wants bench; then
  shares=0
  for def in "${SUITE_DEFS[@]}"; do read -r name share _ <<<"$def"; [[ " $SUITES " == *" $name "* ]] \
    && shares=$((shares + share)); done
  for def in "${SUITE_DEFS[@]}"; do
    read -r name share args <<<"$(echo $def)"
    [[ " $SUITES " == *" $name "* ]] || continue
    # shellcheck disable=SC2086  # args, BENCH_COMMON, BENCH_EXTRA are lists of arguments
    if (( DRY )); then
      listed=$(timeout 120 "$PY" -m cnnfast.bench $args $BENCH_COMMON $BENCH_EXTRA --device cuda --list \
        2>>"$LOG") && n=$(grep -c / <<<"$listed") && (( n > 0 )) \
        && line "bench $name" "$n cases listed; $NOGPU" \
        || { line "bench $name" "FAILED: the case list does not parse"; FAILED=$((FAILED + 1)); }
      printf '\n===== bench %s --list\n%s\n' "$name" "$listed" >>"$LOG"
      continue
    fi
    cap=$(( ($(left) - AFTER_BENCH) * share / shares )); shares=$((shares - share))
    budget=$(( cap - 30 > 10 ? cap - 30 : 10 ))
    phase "bench $name" "$cap" "$AFTER_BENCH" "$PY" -m cnnfast.bench $args $BENCH_COMMON $BENCH_EXTRA \
      --budget "$budget" --out "$OUT/bench" --tag "$name"
    line "" "$("$PY" "$HELPERS" suite-line "$OUT/bench/$name.json" 2>&1 | tail -1)"
  done
  say ""
fi

# --- 3. the tests ------------------------------------------------------------------------------------
if wants tests; then
  if (( DRY )); then
    phase tests 120 0 "$PY" -m pytest -q -p no:cacheprovider --rootdir "$REPO" "$REPO/tests/test_bench.py" \
      -k "every_suite or roofline"
  else
    # The kernels' own tests first, so that a cut at the cap drops the least telling ones; the AOT build
    # and this script's dry run need no GPU (CI runs them).
    order="conv2d max_pool2d fused ops backends cuda_programs extension errors kernel_configs jitview nn convert train"
    files=()
    for t in $order; do [ -f "$REPO/tests/test_$t.py" ] && files+=("$REPO/tests/test_$t.py"); done
    for f in "$REPO"/tests/test_*.py; do
      [[ " ${files[*]} " == *" $f "* || $f == */test_gpu_check.py ]] || files+=("$f")
    done
    phase tests "$TESTS_S" $((MEMCHECK_S + RACECHECK_S + 5)) "$PY" -m pytest -q -p no:cacheprovider -m "not aot" \
      --durations=5 -rfE --rootdir "$REPO" "${files[@]}"
  fi
  sed -n '/^===== tests/,$p' "$LOG" | grep -E '^(FAILED|ERROR)|[0-9]+ (passed|failed|error)|KeyboardInterrupt' \
    | tail -12 | sed 's/^/    /' | tee -a "$SUMMARY"
fi

# --- 4. compute-sanitizer ----------------------------------------------------------------------------
if wants sanitizer; then
  if (( DRY )); then
    for tool in memcheck racecheck; do line "$tool" "$NOGPU"; done
    listed=$(timeout 120 "$PY" -m cnnfast.bench.sanitize --list 2>>"$LOG") \
      && line sanitize "$(tail -1 <<<"$listed") listed; compute-sanitizer: $(command -v compute-sanitizer \
      || echo 'not found')" || { line sanitize "FAILED: the call list does not run"; FAILED=$((FAILED + 1)); }
  else
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1   # real allocation bounds for memcheck
    for tool in memcheck racecheck; do
      cap=$MEMCHECK_S reserve=$((RACECHECK_S + 5)) args="--backend cuda,triton"   # no JIT first
      [ "$tool" = racecheck ] && cap=$RACECHECK_S reserve=5 args="--backend cuda"
      # shellcheck disable=SC2086
      phase "$tool" "$cap" "$reserve" compute-sanitizer --tool "$tool" --error-exitcode 9 \
        "$PY" -m cnnfast.bench.sanitize $args
      sed -n "/^===== $tool/,\$p" "$LOG" | grep -E '^(=+ (ERROR SUMMARY|RACECHECK SUMMARY).*|sanitize:.*)' \
        | tail -2 | sed 's/^/    /' | tee -a "$SUMMARY"
    done
    unset PYTORCH_NO_CUDA_MEMORY_CACHING
  fi
fi

# --- what comes back ---------------------------------------------------------------------------------
if (( $(stat -c %s "$LOG") > 15000000 )); then   # keep the end of an oversized log
  tail -c 15000000 "$LOG" >"$LOG.tail" && mv "$LOG.tail" "$LOG"
fi
if ! files=$("$PY" "$HELPERS" check-out "$OUT" 2>&1) && (( ! DRY )); then
  rm -f "$OUT"/bench/*.md   # the Markdown repeats the JSON: the first to go
  files=$("$PY" "$HELPERS" check-out "$OUT" 2>&1)
fi
line files "$files"
[[ $files == *"within the limits"* ]] || FAILED=$((FAILED + 1))
say "total $((SECONDS - START)) s, $FAILED failed; logs and results in $OUT"
(( FAILED == 0 ))
