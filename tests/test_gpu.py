"""GPU paths, run by `make test-gpu` (pytest -m gpu): precision by compute capability, DDP on
one GPU (an NCCL group), channels_last and torch.compile, two-process DDP on two GPUs, the runner's GPU slots on real devices. Without
CUDA every test here skips (and the DDP one without two GPUs): the default suites are CPU-only."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import textwrap

import pytest
import torch
import yaml
from conftest import PYTHON, ROOT, run_dirs

from cli import cli_main

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
requires_two_gpus = pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
pytestmark = [pytest.mark.gpu, requires_cuda]

ON_GPU = ["--trainer.accelerator=gpu", "--trainer.devices=1", "--run.test_after_fit=false"]


def _val_auroc(run_dir) -> list[float]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [float(r["val/auroc"]) for r in csv.DictReader(f) if r.get("val/auroc")]


def test_precision_is_chosen_by_compute_capability_without_a_cuda_context(fit_args):
    """The precision the run picks is the table's for this GPU (tests/test_cli.py KNOWN_GPUS),
    read without a CUDA context, and the forward pass really runs under that autocast."""
    from test_cli import KNOWN_GPUS

    from rundir.slots import default_precision

    code = "import torch; from rundir.slots import default_precision; p = default_precision('auto'); " \
           "print(p, torch.cuda.is_initialized())"
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert out[1] == "False"  # no context was made to decide
    major, minor = torch.cuda.get_device_capability()
    table = {cap: precision for _, cap, precision in KNOWN_GPUS}  # newer than the table: Ampere or later
    expected = table.get(f"{major}.{minor}", "bf16-mixed" if major >= 8 else "unknown GPU")
    assert out[0] == expected == default_precision("auto")
    seen: list[torch.dtype] = []
    cli = cli_main(fit_args("configs/demo.yaml", *ON_GPU))
    assert cli.trainer.precision == expected
    model = cli.model.cuda().eval()
    handle = model.backbone.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    with torch.no_grad(), cli.trainer.precision_plugin.forward_context():
        model(torch.randn(2, 1, 32, 32, device="cuda"))
    handle.remove()
    assert seen == [{"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(expected, torch.float32)]
    assert all(math.isfinite(v) for v in _val_auroc(cli.run_dir))
    # an explicit --trainer.precision wins
    assert cli_main(fit_args("configs/demo.yaml", *ON_GPU, "--trainer.precision=32-true")).trainer.precision == "32-true"


def test_the_throughput_benchmarks_plain_loop_trains_at_the_clis_precision(tmp_path):
    """benchmarks/throughput.py's (a) at the precision `cli.py fit` picks here, as its (b) is
    (not is_bf16_supported(), which says yes on a V100/T4 that the CLI trains at 16-mixed)."""
    import sys

    sys.path.append(str(ROOT / "benchmarks"))
    import throughput

    from rundir.slots import default_precision

    args = throughput.parse_args(["--device", "cuda", "--backbone", "resnet18", "--image-size", "32",
                                  "--batch-size", "4", "--steps", "2", "--warmup", "1", "--work", str(tmp_path)])
    row = throughput.plain_loop(args, "cuda", compiled=False)
    assert row["precision"] == default_precision("cuda") and row["images_per_s"] > 0


def test_ddp_on_one_gpu_builds_an_nccl_group_and_logs_its_epoch_figures(hand_data, tmp_path):
    """`--trainer.devices=1 --trainer.strategy=ddp` creates an NCCL process group on one GPU: the
    cheapest reproduction of a CPU tensor reaching a collective (Lightning #18803), e.g. a
    sync_dist=True value computed on the CPU. Validation and the test after fit run through it."""
    done = subprocess.run(
        [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}",
         "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", "--trainer.accelerator=gpu",
         "--trainer.devices=1", "--trainer.strategy=ddp", "--trainer.max_epochs=2", "--data.num_workers=0",
         "--data.image_size=32", "--data.batch_size=4", "--trainer.enable_progress_bar=false",
         "--run.wandb=disabled", "--eval.bootstrap_resamples=200"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len([r for r in rows if r.get("val/loss")]) == 2 and any(r.get("test/loss") for r in rows)
    assert (run_dir / "test_report.json").is_file()


@pytest.mark.parametrize("options", [["--model.channels_last=true"], ["--model.compile=true"],
                                     ["--model.channels_last=true", "--model.compile=true"]],
                         ids=["channels_last", "compile", "both"])
def test_channels_last_and_compile_train_and_match_the_plain_model(fit_args, options):
    cli = cli_main(fit_args("configs/demo.yaml", *ON_GPU, "--trainer.precision=32-true", *options))
    assert len(_val_auroc(cli.run_dir)) == 1 and all(math.isfinite(v) for v in _val_auroc(cli.run_dir))
    model = cli.model.cuda().eval()
    conv = next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    if "--model.channels_last=true" in options:
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert (model._compiled is not None) == ("--model.compile=true" in options)
    # same weights, same outputs as the plain eager backbone
    x = torch.randn(4, 1, 32, 32, device="cuda")
    with torch.no_grad():
        assert torch.allclose(model(x), model.backbone(x.contiguous()), atol=1e-3, rtol=1e-3)
    # checkpoints hold the backbone once, uncompiled, and load into a plain model
    state = torch.load(cli.run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert not any("_orig_mod" in k or k.startswith("_compiled") for k in state)
    assert set(state) == set(type(model)(num_classes=2).state_dict())


@requires_two_gpus
def test_ddp_on_two_gpus_gives_one_run(hand_data, tmp_path):
    from wandb_records import exit_code, history, run_file

    done = subprocess.run(
        [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", f"--data.root={hand_data}",
         "--demo.body_part=null", f"--run.root={tmp_path / 'runs'}", "--trainer.accelerator=gpu",
         "--trainer.devices=2", "--trainer.strategy=ddp", "--trainer.max_epochs=2", "--data.num_workers=0",
         "--data.image_size=32", "--data.batch_size=4", "--trainer.enable_progress_bar=false", "--run.wandb=offline"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    [run_dir] = run_dirs(tmp_path)  # both ranks in one run directory, one W&B run
    assert [r["epoch"] for r in history(run_file(run_dir)) if "val/auroc" in r] == [0, 1]
    assert exit_code(run_file(run_dir)) == 0
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "test_report.json").is_file()


# A stand-in program for the runner: records which physical GPU (by UUID) it was given.
WHICH_GPU = r'''
import json, os, sys, torch
run_dir = os.environ["XRAY_RUN_DIR"]
json.dump({"visible": os.environ.get("CUDA_VISIBLE_DEVICES"), "count": torch.cuda.device_count(),
           "uuid": str(torch.cuda.get_device_properties(0).uuid)}, open(os.path.join(run_dir, "gpu.json"), "w"))
open(os.path.join(run_dir, "sweep_history.jsonl"), "w").write(json.dumps({"epoch": 0, "val/score": 1.0}) + "\n")
'''


def test_runner_slots_are_the_physical_gpus_of_this_allocation(tmp_path, monkeypatch):
    """Each run sees exactly one GPU, the one its slot names in the allocation this process
    inherited (CUDA_VISIBLE_DEVICES as a scheduler sets it, or every GPU), and every GPU is used."""
    import optuna

    from sweeps.main import main
    from sweeps.runner import runner as runner_loop

    monkeypatch.setattr(runner_loop, "POLL_S", 0.05)
    n = torch.cuda.device_count()
    uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(n)]  # this process's view
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    allocation = inherited.split(",")[:n] if inherited else [str(i) for i in range(n)]
    program = tmp_path / "which_gpu.py"
    program.write_text(textwrap.dedent(WHICH_GPU))
    sweep = {"program": str(program), "name": "slots", "method": "grid",
             "metric": {"name": "val/score", "goal": "maximize"},
             "parameters": {"x": {"values": list(range(2 * n))}},
             "command": ["${env}", "${interpreter}", "${program}", "${args}"]}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep))
    assert main(["run", str(tmp_path / "sweep.yaml"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    trials = optuna.load_study(study_name="slots", storage=f"sqlite:///{tmp_path / 'out' / 'optuna.db'}").get_trials()
    seen = set()
    for t in trials:
        gpu = json.loads((tmp_path / "out" / t.user_attrs["run_dir"] / "gpu.json").read_text())
        assert gpu["count"] == 1 and gpu["visible"] == t.user_attrs["slot"]
        assert gpu["uuid"] == uuids[allocation.index(gpu["visible"])]
        seen.add(gpu["uuid"])
    assert seen == set(uuids)
