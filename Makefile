# make demo : the main job on built-in synthetic data (creates .venv on first use)
# make test : the fast test suite (CPU, no network); make test-slow: multi-process/end-to-end tests
# make test-gpu: the GPU paths (bf16, channels_last, compile, DDP on two GPUs, GPU slots); skip without CUDA
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# The torch/torchvision builds this project is tested with (any torch >= 2.4 works).
TORCH  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: setup demo train test test-slow test-all test-gpu lint sweeps clean bench-gpu

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q ".[dev,postgres,explain,bench]"
	touch $@

setup: $(VENV)/.installed

# A small offline sweep (quick_test preset) on the demo config: no W&B server needed. Two runs
# at a time, the CPU cores split between them (faster than one run on all cores: start-up and
# evaluation overlap with training).
demo: setup
	$(BIN)/python -m sweeps run sweeps/quick_test.yaml --cfg configs/demo.yaml --out sweep_runs/demo --seed 0 --workers 2
	$(BIN)/python -m sweeps best sweep_runs/demo --export sweep_runs/demo/best.yaml
	$(BIN)/python -m sweeps report sweep_runs/demo

# One training run of the demo config.
train: setup
	$(BIN)/python cli.py fit --config configs/demo.yaml

# The fast suite in two worker processes (pytest-xdist): while one waits on a process start or
# on disk, the other trains. The slow suite stays serial: its multi-process tests time signals.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) -m "not slow and not gpu"

test-slow: setup
	$(BIN)/python -m pytest -q -m "slow and not gpu"

test-all: setup
	$(BIN)/python -m pytest -q -m "not gpu"

# The GPU targets run where they are given a GPU, often a machine with no network and a Python
# that already holds torch: no setup step; the venv's Python if there is one, else $(PYTHON).
# benchmarks/gpu_session.sh runs both in one command on such a machine (benchmarks/README.md).
GPU_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON))

# Every GPU figure of benchmarks/README.md on one GPU, < 8 minutes, into benchmarks/gpu.json.
bench-gpu:
	$(GPU_PYTHON) benchmarks/gpu.py --out benchmarks/gpu.json

test-gpu:
	$(GPU_PYTHON) -m pytest -q -m gpu

lint: setup
	$(BIN)/ruff check .

sweeps: setup
	$(BIN)/python -m sweeps generate

clean:
	rm -rf runs sweep_runs data/demo_hand
