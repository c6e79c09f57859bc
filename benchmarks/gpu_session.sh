#!/usr/bin/env bash
# One command for a session lent a GPU machine for a few minutes (no network there; torch,
# lightning, torchmetrics, torchvision preinstalled): install the carried wheels, run the GPU
# tests, then the GPU benchmark in the time left; everything lands under $OUT.
#
#   here:  bash benchmarks/fetch_wheels.sh            # fills .whl/ (gitignored), ~45 MB
#   there: bash benchmarks/gpu_session.sh             # device tool: carry [".whl"], timeout_s 600
#
# SESSION_S (default 560) bounds the whole; TEST_S (150) the tests; the benchmark gets what is
# left (at most 440 s, its `make bench-gpu` budget) and is skipped under 120 s. Files under $OUT:
# session.log (everything), pip.log, pytest-gpu.log, pytest-gpu.xml, gpu.json, nvidia-smi.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/xray-gpu-session}
PY=${PYTHON:-python3}
SESSION_S=${SESSION_S:-560}
TEST_S=${TEST_S:-150}
mkdir -p "$OUT"
exec > >(tee "$OUT/session.log") 2>&1
export PYTHONUNBUFFERED=1
start=$SECONDS
step() { echo "== $(date -u +%H:%M:%S) +$((SECONDS - start)) s: $*"; }

step "machine"
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1; head -15 "$OUT/nvidia-smi.txt"
"$PY" -c 'import sys, torch, lightning; print(sys.version.split()[0], sys.executable, "torch", torch.__version__,
  "cuda", torch.version.cuda, "lightning", lightning.__version__)'

step "wheels from .whl/ (offline)"
if [ -f .whl/requirements.txt ]; then
    # Into the image's own environment, which already holds torch: pip adds what is missing and
    # keeps what is installed and satisfies the requirements.
    if ! timeout 120 "$PY" -m pip install --no-index --find-links .whl --no-cache-dir --disable-pip-version-check \
            -r .whl/requirements.txt >"$OUT/pip.log" 2>&1; then
        echo "pip could not resolve offline (see pip.log); installing the wheels of what is missing, no deps"
        missing=$("$PY" - <<'PYEOF'
import importlib.metadata as md, pathlib
for wheel in sorted(pathlib.Path(".whl").glob("*.whl")):
    try:
        md.version(wheel.name.split("-")[0])
    except md.PackageNotFoundError:
        print(wheel)
PYEOF
)
        # shellcheck disable=SC2086  # one argument per wheel
        timeout 120 "$PY" -m pip install --no-index --no-deps --no-cache-dir $missing >>"$OUT/pip.log" 2>&1
    fi
    tail -2 "$OUT/pip.log"
else
    echo "no .whl/requirements.txt: run benchmarks/fetch_wheels.sh here first and carry .whl"
fi
"$PY" -c 'import wandb, jsonargparse, optuna, pydicom, plotly; print("imports ok: wandb", wandb.__version__,
  "jsonargparse", jsonargparse.__version__, "optuna", optuna.__version__)' || echo "MISSING PACKAGES: tests will fail"

step "pytest -m gpu (at most ${TEST_S} s)"
timeout -k 15 "$TEST_S" "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml="$OUT/pytest-gpu.xml" \
    2>&1 | tee "$OUT/pytest-gpu.log"
echo "pytest exit code ${PIPESTATUS[0]} (124: timed out)"

left=$((SESSION_S - (SECONDS - start) - 30))
budget=$((left < 440 ? left : 440))
if [ "$budget" -ge 120 ]; then
    step "benchmarks/gpu.py --budget-s $budget"
    timeout -k 15 $((budget + 20)) "$PY" benchmarks/gpu.py --budget-s "$budget" --out "$OUT/gpu.json" \
        --work /tmp/xray-bench-gpu
    echo "gpu.py exit code $? (1: a phase failed, its error is in gpu.json; 124: timed out)"
else
    echo "benchmark skipped: only ${left} s of the session left"
fi
step "done"
