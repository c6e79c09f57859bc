#!/usr/bin/env bash
# Fill .whl/ (gitignored) with the wheels that a lent GPU machine lacks, for its Python, here,
# where PyPI answers: that machine has no network. benchmarks/README.md ("A lent GPU") says why.
#
#   bash benchmarks/fetch_wheels.sh              # TARGET_PY=3.12: the GPU image's python3
#   TARGET_PY=3.11 bash benchmarks/fetch_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
TARGET_PY=${TARGET_PY:-3.12}
DEST=${DEST:-.whl}
# What the GPU image (torch, lightning, torchmetrics, torchvision, numpy, pytest, ... preinstalled)
# lacks of pyproject's dependencies. Each is pinned to the version this checkout's tests run with
# where it is installed here, else pyproject's range.
MISSING="wandb jsonargparse optuna pydicom plotly"
reqs=$("$PY" - "$MISSING" <<'PYEOF'
import importlib.metadata as md, re, sys, tomllib
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for dep in deps:
    name = re.match(r"[A-Za-z0-9_.-]+", dep).group(0)
    if name in sys.argv[1].split():
        try:
            print(re.sub(r"[<>=!~,].*$", "", dep.split(";")[0]).strip() + "==" + md.version(name))
        except md.PackageNotFoundError:
            print(dep.split(";")[0].strip())
PYEOF
)
rm -rf "$DEST"
mkdir -p "$DEST"
echo "$reqs" >"$DEST/requirements.txt"
# shellcheck disable=SC2086  # one argument per requirement
"$PY" -m pip download -q --only-binary=:all: --python-version "$TARGET_PY" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 \
    -d "$DEST" $reqs
# numpy is on the GPU image, under torch; carrying it would cost 16 of the 64 MiB a call may carry.
rm -f "$DEST"/numpy-*.whl
echo "$(ls "$DEST"/*.whl | wc -l) wheels, $(du -sh "$DEST" | cut -f1) in $DEST for Python $TARGET_PY:"
cat "$DEST/requirements.txt"
