#!/usr/bin/env bash
# The GPU checks of TN Studio in one run (under 7 minutes), for a machine with a CUDA device and torch
# installed (e.g. the `device` tool's H200: Python 3.12, torch preinstalled, no internet). From the repository root:
#
#     bash benchmarks/gpu_suite.sh               # prints everything; with $OUT set, also writes $OUT/gpu.txt
#     WHEELS=wheels bash benchmarks/gpu_suite.sh # first installs missing dependencies from a local wheel folder
#
# Steps, each under `timeout` (seconds in brackets, 390 in all):
#   1. pytest -m cuda tests/test_cuda.py tests/test_conv.py                              [120]
#   2. benchmarks/layer_speed.py --device cuda (small-layer row, three sizes, digits epoch) [70]
#   3. benchmarks/conv_speed.py --device cuda --reps 20                                     [50]
#   4. benchmarks/generator_speed.py --device cuda (MERA/aTTN, sliced vs unsliced, memory) [150]
#      (nonlinear cores are calibrated on the CPU, with every core: VGG-16's MERA and aTTN took 72 s on an H200's 16)
# A step that fails or times out is reported and the next one still runs; the exit status is the number of failed
# steps. Nothing is downloaded: dependencies missing from the machine are listed (and installed from $WHEELS, a
# folder of wheels for that Python, when given).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TNSTUDIO_HOME=${TNSTUDIO_HOME:-$(mktemp -d)}
LOG=/dev/null
if [ -n "${OUT:-}" ]; then mkdir -p "$OUT" && LOG="$OUT/gpu.txt" && : >"$LOG"; fi
say() { echo "$*" | tee -a "$LOG"; }

say "# TN Studio GPU suite, $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -n)"
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {torch.cuda.get_device_name(0)}, {p.total_memory / 2**30:.0f} GiB, {torch.cuda.device_count()} visible")
else:
    print("device: none (torch.cuda.is_available() is False)")
EOF
if ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    say "error: no CUDA device: nothing to run"; exit 99
fi

# the project's imports (pyproject.toml); tltorch (tensorly-torch) only adds peer rows to layer_speed/conv_speed
NEED="numpy opt_einsum cotengra networkx sklearn pytest"
missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEED)
if [ -n "$missing" ] && [ -n "${WHEELS:-}" ]; then
    say "installing from $WHEELS: $missing"
    pkgs=$(echo "$missing" | sed 's/sklearn/scikit-learn/; s/opt_einsum/opt-einsum/')
    "$PY" -m pip install --no-index --find-links "$WHEELS" $pkgs 2>&1 | tail -3 | tee -a "$LOG"
    missing=$("$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $NEED)
fi
if [ -n "$missing" ]; then
    say "error: missing Python modules: $missing (pip install them, or give WHEELS=<folder of wheels>)"; exit 98
fi
"$PY" -c "import tltorch" 2>/dev/null || say "note: tensorly-torch is not installed: the tltorch peer rows are skipped"

failed=0
step() {  # step SECONDS LABEL COMMAND...
    local limit=$1 label=$2; shift 2
    say ""
    say "## $label (limit ${limit} s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | grep -v '^USDT:' | tee -a "$LOG"
    local rc=${PIPESTATUS[0]}
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then say "!! $label: timed out after $limit s"; failed=$((failed + 1))
    elif [ "$rc" -ne 0 ]; then say "!! $label: exit status $rc"; failed=$((failed + 1))
    else say "-- $label: done in $((SECONDS - t0)) s"; fi
}

step 120 "cuda tests" "$PY" -m pytest -q -p no:cacheprovider -m cuda tests/test_cuda.py tests/test_conv.py
step 70 "layer speed" "$PY" benchmarks/layer_speed.py --device cuda --reps 10 --digits-rounds 5
step 50 "conv speed" "$PY" benchmarks/conv_speed.py --device cuda --reps 20
step 150 "generator speed" "$PY" benchmarks/generator_speed.py --device cuda --reps 3 --threads "$(nproc)"
say ""
say "# $failed step(s) failed; $SECONDS s in all"
exit "$failed"
