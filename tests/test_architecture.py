"""The layout the README's Architecture section describes: the in-run contract apart from the
orchestration, no import cycles, side-effect-free imports, one adapter per third-party
internal (each checked here, so an upgrade that removes one fails a test, not a sweep)."""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from conftest import PYTHON, ROOT

PACKAGES = ("cli", "training", "models", "datamodules", "sweeps", "evaluation", "rundir")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_files() -> list[Path]:
    return [ROOT / "cli.py", *(f for pkg in PACKAGES[1:] for f in (ROOT / pkg).rglob("*.py"))]


def project_imports() -> dict[str, set[str]]:
    """module -> project modules it imports (at any level of the file)."""
    modules = {_module_name(f): f for f in product_files()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            found |= {t for t in targets if t in modules}
        graph[name] = found - {name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def _package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same graph between rooms: cli, training, models, datamodules, and sweeps' subpackages."""
    def room(module: str) -> str:
        parts = module.split(".")
        return ".".join(parts[:2]) if parts[0] == "sweeps" and len(parts) > 2 else parts[0] \
            if parts[0] != "sweeps" else module

    rooms: dict[str, set[str]] = {}
    for module, deps in graph.items():
        rooms.setdefault(room(module), set()).update(room(d) for d in deps if room(d) != room(module))
    return rooms


def test_no_import_cycle_between_modules_or_rooms():
    graph = project_imports()
    assert _cycles(graph) == []
    assert _cycles(_package_graph(graph)) == []


def test_in_run_contract_imports_nothing_from_the_orchestration():
    graph = project_imports()
    contract = [m for m in graph if m.startswith("sweeps.contract")]
    assert contract
    for module in contract:
        for dep in graph[module]:
            assert dep.startswith("sweeps.contract") or dep.split(".")[0] in ("models", "datamodules", "rundir"), \
                (module, dep)


def test_the_run_directory_and_launcher_import_nothing_of_the_project_nor_torch():
    """rundir/ is shared by training (the CV parent) and the orchestration (the runner), so it
    points at neither; a runner that only launches must not pay for torch."""
    graph = project_imports()
    assert any(m.startswith("rundir") for m in graph)
    for module, deps in graph.items():
        if module.startswith("rundir"):
            assert all(d.startswith("rundir") for d in deps), (module, deps)
    code = "import sys, rundir; print(sorted(m for m in ('torch', 'lightning', 'optuna', 'wandb') if m in sys.modules))"
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_evaluation_is_pure_statistics():
    graph = project_imports()
    for module, deps in graph.items():
        if module.startswith("evaluation"):
            assert all(d.startswith("evaluation") for d in deps), (module, deps)


def test_training_and_cli_use_only_the_contract_of_sweeps():
    graph = project_imports()
    for module, deps in graph.items():
        if module == "cli" or module.startswith("training"):
            assert all(not d.startswith("sweeps") or d.startswith("sweeps.contract") for d in deps), (module, deps)
    assert not any("cli" in deps for deps in graph.values())  # nothing imports the launcher


def test_the_orchestration_imports_nothing_of_training():
    """It talks to a run through argv and files; parameter names come from the option classes'
    source (sweeps/files/params.py), so `python -m sweeps generate` needs neither training nor torch."""
    graph = project_imports()
    for module, deps in graph.items():
        if module.startswith("sweeps") and not module.startswith("sweeps.contract"):
            assert not any(d == "cli" or d.startswith("training") for d in deps), (module, deps)


def test_importing_cli_has_no_side_effects():
    code = ("import signal, warnings; import cli, training.cli; "
            "ours = [f for f in warnings.filters if f[1] is not None and 'dirpath has changed' in f[1].pattern]; "
            "print(signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, not ours)")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_cli_py_installs_the_stop_flag_before_torch_is_imported():
    """Why sweeps/contract/__init__.py imports nothing: `python cli.py` installs the SIGTERM flag
    first, since an agent may stop a run while torch is still importing. Run cli.py as a program
    and look at the handler at the moment something first asks for torch."""
    code = ("import importlib.abc, os, runpy, signal, sys\n"
            "class Spy(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':\n"
            "            print(signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL,\n"
            "                  'optuna' in sys.modules, 'sweeps.files' in sys.modules, flush=True)\n"
            "            os._exit(0)\n"
            "sys.meta_path.insert(0, Spy())\n"
            "sys.argv = ['cli.py', '--help']\n"
            "runpy.run_path('cli.py', run_name='__main__')\n")
    out = subprocess.run([PYTHON, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "False", "False"]


@pytest.mark.parametrize("package", ["rundir", "training", "sweeps.files", "sweeps.runner", "sweeps.analysis"])
def test_each_package_re_exports_its_public_names(package):
    import importlib

    module = importlib.import_module(package)
    assert module.__all__
    for name in module.__all__:
        assert getattr(module, name) is not None


MAX_LINES = 300  # one job per module: every product module of every room (README, "Architecture")


def test_modules_are_of_a_readable_size():
    sizes = {f.relative_to(ROOT).as_posix(): len(f.read_text().splitlines()) for f in product_files()}
    assert {f: n for f, n in sizes.items() if n > MAX_LINES} == {}


# ---- third-party internals: one adapter each, checked here --------------------------------------


def test_lightning_internals_the_contract_relies_on_exist():
    from lightning.pytorch import Trainer

    from sweeps.contract.lightning_adapter import ddp_children, keep_sigterm_handler

    trainer = Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)
    assert callable(trainer._signal_connector.register_signal_handlers)
    called = []
    keep_sigterm_handler(trainer, lambda: called.append(1))
    trainer._signal_connector.register_signal_handlers()
    assert called == [1]
    assert ddp_children(trainer) == []
    from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

    assert "procs" in _SubprocessScriptLauncher.__init__.__code__.co_names


def test_wandb_agent_helpers_the_launcher_relies_on_exist():
    from wandb.sdk.launch.sweeps import utils

    assert callable(utils.create_sweep_command) and callable(utils.create_sweep_command_args)


def test_no_private_attribute_of_optuna_or_wandb_is_used():
    pattern = ("._storage", "._trial_id", "._experiment", "wandb.sdk")
    allowed = {"sweeps/runner/launch.py": "wandb.sdk"}
    for pkg in ("sweeps", "training", "models", "datamodules"):
        for f in (ROOT / pkg).rglob("*.py"):
            text = f.read_text()
            rel = f.relative_to(ROOT).as_posix()
            for p in pattern:
                if p in text and allowed.get(rel) != p:
                    raise AssertionError(f"{rel} uses {p}")


def test_print_config_shows_what_the_run_will_use():
    out = subprocess.run(
        [PYTHON, "cli.py", "fit", "--config", "configs/demo.yaml", "--sweep.when+=model.momentum:model.optimizer=sgd",
         "--model.optimizer=adamw", "--model.momentum=0.5", "--print_config"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import yaml

    printed = yaml.safe_load(out.stdout)
    assert printed["model"]["optimizer"] == "adamw" and printed["model"]["momentum"] == 0.9


def _validation_epoch(model, batches):
    """The evaluation owner through one (quiet) validation epoch of `batches` (step outputs)."""
    from types import SimpleNamespace

    from training.evaluate import Evaluation
    from training.options import EvalOptions

    evaluation = Evaluation(ROOT / "unused", EvalOptions())
    evaluation.setup(None, model, "validate")
    evaluation.quiet = True
    trainer = SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="validate"), is_global_zero=False)
    evaluation.on_validation_epoch_start(trainer, model)
    for i, outputs in enumerate(batches):
        evaluation.on_validation_batch_end(trainer, model, outputs, None, i)
    evaluation.on_validation_epoch_end(trainer, model)
    return evaluation


def test_metric_names_come_from_the_models_metric_collection():
    import torch

    from models.classifier import XrayClassifier
    from models.metrics import logged_metric_names
    from sweeps.files.check import validation_metrics

    for classes in (2, 3):
        model = XrayClassifier(backbone="resnet18", num_classes=classes)
        step = {"logits": torch.randn(12, classes), "labels": torch.arange(12) % classes, "index": torch.arange(12)}
        evaluation = _validation_epoch(model, [step])
        logged = set(evaluation.current_metrics("val"))
        assert set(logged_metric_names(classes)) == logged == set(validation_metrics(classes))
        assert evaluation.metric_names("val") == logged_metric_names(classes)
    assert "val/sensitivity" not in validation_metrics(3)


def test_validation_metrics_count_each_image_once_whatever_the_sampler_repeats():
    """Under DDP, DistributedSampler pads the ranks to equal length by repeating images; the
    logged metrics and the confusion matrix must both count every image exactly once."""
    import torch

    from models.classifier import XrayClassifier

    model = XrayClassifier(backbone="resnet18", num_classes=2)
    right, wrong = torch.tensor([[0.0, 4.0]]), torch.tensor([[4.0, 0.0]])
    images = torch.zeros(1, 1, 32, 32)
    steps = []
    # image 0 predicted wrongly, images 1..3 rightly; image 0 comes again as padding
    for index, logits in ((0, wrong), (1, right), (2, right), (3, right), (0, wrong)):
        model.forward = lambda x, logits=logits: logits
        steps.append(model.validation_step((images, torch.tensor([1]), torch.tensor([index])), index))
    evaluation = _validation_epoch(model, steps)
    values = evaluation.current_metrics("val")
    assert float(values["val/acc"]) == pytest.approx(3 / 4)
    expected_loss = torch.nn.functional.cross_entropy(torch.cat([wrong, right, right, right]), torch.ones(4).long())
    assert float(values["val/loss"]) == pytest.approx(float(expected_loss))
    assert list(evaluation.outputs["val"]["index"]) == [0, 1, 2, 3]


def test_backbone_choices_are_the_factorys_names():
    import typing

    from models.backbones import BACKBONES, BackboneName
    from models.classifier import XrayClassifier

    assert set(typing.get_args(BackboneName)) == set(BACKBONES)
    assert typing.get_type_hints(XrayClassifier.__init__)["backbone"] == BackboneName
