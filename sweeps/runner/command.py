"""`python -m sweeps run SWEEP.yaml`: the same W&B sweep file, no W&B server, Optuna for sampling
and storage (README, "Sweeps without a W&B server": methods, storage, the sweep directory)."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
from pathlib import Path
from typing import Optional

import yaml

import sweeps.runner.placement as placement
from rundir.atomic import write_atomic
from rundir.slots import gpu_slots, visible_gpus
from sweeps.errors import RunnerError, SweepConfigError
from sweeps.files.check import check_for_cli
from sweeps.files.schema import NULL, read_config
from sweeps.files.sweep import Sweep
from sweeps.runner.launch import prepare_sweep, program_root
from sweeps.runner.progress import Progress
from sweeps.runner.prune import DEFAULT_KEEP, KEEP_ATTR
from sweeps.runner.runner import POLL_S, LaunchSettings, Runner
from sweeps.runner.slurm import requeue_after, srun_prefix
from sweeps.runner.space import build_space, make_sampler
from sweeps.runner.storage import DB_FILE, Storage, check_url, mask_password
from sweeps.text import visible

DEFAULT_COUNT = 10
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def check_heartbeat(seconds: Optional[float]) -> Optional[int]:
    """--heartbeat: whole seconds (Optuna's heartbeat_interval), longer than a poll of the runs."""
    if seconds is None:
        return None  # the sweep's own, else the default
    if seconds <= POLL_S:
        raise RunnerError(f"--heartbeat {seconds:g} is shorter than the runner's poll interval ({POLL_S:g} s); "
                          "give whole seconds, e.g. --heartbeat 10")
    if seconds != int(seconds):
        raise RunnerError(f"--heartbeat {seconds:g}: give whole seconds (Optuna's heartbeat_interval)")
    return int(seconds)


def memory_guard(min_free_gb: Optional[float],
                 slots: list[Optional[str]]) -> Optional[placement.GpuMemoryGuard]:
    """--min-free-gpu-mem: the guard, after checking that there are GPUs and a way to read them."""
    if min_free_gb is None:
        return None
    if not any(slots):
        raise RunnerError("--min-free-gpu-mem: the runs use no GPU (no visible GPUs, or CUDA_VISIBLE_DEVICES empty)")
    try:
        placement.check_slots(slots)
    except placement.GpuProbeError as e:
        raise RunnerError(f"--min-free-gpu-mem needs nvidia-smi to read the GPUs' free memory: {e}") from None
    return placement.GpuMemoryGuard(min_free_gb)


def sweep_place(name: Optional[str], args: argparse.Namespace) -> tuple[str, Path]:
    """The sweep's name (a directory and a study name: letters, digits, . _ - only) and directory."""
    sweep_file = getattr(args, "sweep_file", None)
    name = str(name or (Path(sweep_file).stem if sweep_file else "sweep"))
    if not NAME.fullmatch(name) or name in (".", ".."):
        raise RunnerError(f"sweep name {name!r} is not allowed: use letters, digits, '.', '_' and '-' "
                          "(at most 100 characters, no path separators or line breaks)")
    return name, Path(args.out or Path("sweep_runs") / name).resolve()


def check_data_root(sweep: Sweep, configs: list[str], root: Path) -> None:
    """data.root must exist before runs of cli.py are launched (each would fail on it), unless
    the runs generate the demo data set there (demo.body_part)."""
    if Path(sweep.program or "cli.py").name != "cli.py":
        return
    found: dict[str, tuple[list, str]] = {}  # option -> (values, where they come from); the last wins
    for path in configs:
        config = read_config(path)
        for group, key in (("data", "root"), ("demo", "body_part")):
            section = config.get(group)
            if isinstance(section, dict) and key in section:
                found[f"{group}.{key}"] = ([section[key]], Path(path).name)
    for option in ("data.root", "demo.body_part"):
        if option in sweep.fixed_options:
            found[option] = ([sweep.fixed_options[option]], "the sweep's command")
        if option in sweep.parameters and sweep.parameters[option].choices:
            found[option] = (sweep.parameters[option].choices, "the sweep's parameters")
    demo = found.get("demo.body_part", ([None], ""))[0]
    if any(v not in (None, NULL, "None") for v in demo) or "data.root" not in found:
        return  # demo data is generated into data.root; no data.root: the CLI says so itself
    values, source = found["data.root"]
    missing = [str(v) for v in values if not (root / Path(str(v)).expanduser()).is_dir()]
    if missing:
        raise RunnerError(
            f"data.root {', '.join(missing)} (from {source}) does not exist{f' in {root}' if root != Path.cwd() else ''}"
            ": every run of this sweep would fail on it. Give the LightningCLI config of your data with --cfg, "
            "e.g. `python -m sweeps run SWEEP.yaml --cfg configs/<your data>.yaml`, or `--cfg configs/demo.yaml` "
            "to try it on the built-in demo data (generated on first use)")


def check_not_lost(store: Storage, sweep_dir: Path, shown_url: str) -> None:
    """A study with no trials next to run records: the storage was lost (an optuna.db truncated
    to 0 bytes, deleted, or another --storage). Starting afresh would repeat every finished run."""
    records = list(sweep_dir.glob("runs/*/run.json"))
    if records and not store.trials():
        raise RunnerError(
            f"{sweep_dir} holds {len(records)} run record(s) (runs/*/run.json) but the sweep storage {shown_url} "
            "holds none of their trials: the storage was lost, emptied or truncated (or --storage names "
            "another one), and starting over would run every finished run again. Restore the storage "
            f"(e.g. optuna.db from a backup) or give the --storage the sweep used; to start afresh, move "
            f"{sweep_dir / 'runs'} aside or give another --out. `python -m sweeps best {sweep_dir}` still "
            "lists the finished runs from their run.json files.")


def run_offline(sweep: Sweep, args: argparse.Namespace) -> int:
    name, sweep_dir = sweep_place(sweep.name, args)
    root = program_root(sweep.program, getattr(args, "sweep_file", None))
    if args.cfg:
        cfg = Path(args.cfg)
        if not cfg.is_file() and (root / cfg).is_file():
            cfg = root / cfg
        if cfg.is_file() and cfg.resolve().parent != root / cfg.parent:
            cfg = cfg.resolve()  # the run starts in the repository root, not here
        args.cfg = str(cfg)
    heartbeat = check_heartbeat(args.heartbeat)
    nodes = getattr(args, "nodes_per_trial", None)  # each run an srun step of the SLURM job (runner/slurm.py)
    devices = (args.tasks_per_node or args.gpus_per_trial) if nodes else args.gpus_per_trial  # per node
    sweep = Sweep.from_dict(prepare_sweep(sweep.to_dict(), args.cfg, devices, nodes))
    gpus = args.gpus_per_trial if nodes and visible_gpus() else 0  # per node for the step; CPU ranks use gloo
    if sweep.metric is None:  # refused before anything is written or run, as every run would refuse:
        raise RunnerError("the sweep has no metric.name; the offline runner ranks runs by it")
    space = build_space(sweep)  # a distribution Optuna lacks, a grid too large
    check_data_root(sweep, check_for_cli(sweep, root), root)  # the CLI and its configs
    try:
        slots = [None] if nodes else gpu_slots(args.gpus, args.gpus_per_trial, args.workers, args.trials_per_gpu)
    except ValueError as e:
        raise RunnerError(str(e)) from e
    gpu_guard = memory_guard(args.min_free_gpu_mem, slots)
    if space.method == "grid":
        count = min(args.count or space.grid_size(), space.grid_size())
    else:
        count = args.count or sweep.run_cap or DEFAULT_COUNT
        if not args.count and not sweep.run_cap:
            print(f"{sweep.method} sweep: {count} runs (--count N for more)")
    if args.storage:
        check_url(args.storage)  # before the sweep directory is made
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunnerError(f"cannot create the sweep directory {sweep_dir}: {e.strerror} (--out)") from None
    sweep_yaml = sweep_dir / "sweep.yaml"
    try:
        same = not sweep_yaml.is_file() or Sweep.from_dict(yaml.safe_load(sweep_yaml.read_text())).same_runs(sweep)
    except (yaml.YAMLError, SweepConfigError):
        same = False
    if not same:
        raise RunnerError(f"{sweep_dir} holds a different sweep ({sweep_yaml}); give another --out")
    url = args.storage or f"sqlite:///{sweep_dir / DB_FILE}"
    try:
        store = Storage(url, name, sweep.goal, make_sampler(space, args.seed), heartbeat=heartbeat)
    except RunnerError:
        raise
    except Exception as e:  # a bad URL, no server, a missing driver: one line, password masked
        with contextlib.suppress(OSError):
            sweep_dir.rmdir()  # only if still empty
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RunnerError(f"cannot open sweep storage {mask_password(url)}: {type(e).__name__}: "
                          f"{mask_password(first)}") from None
    check_not_lost(store, sweep_dir, mask_password(url))
    if hasattr(args, "keep_checkpoints") or KEEP_ATTR not in store.study.user_attrs:  # every runner's K (prune.py):
        store.study.set_user_attr(KEEP_ATTR, getattr(args, "keep_checkpoints", DEFAULT_KEEP))  # kept unless given
    try:
        write_atomic(sweep_yaml, yaml.safe_dump(sweep.to_dict(), sort_keys=False))
    except OSError as e:
        raise RunnerError(f"cannot write {sweep_yaml}: {e.strerror} (--out)") from None
    progress = Progress(count, live=not args.quiet and sys.stdout.isatty())
    settings = LaunchSettings(wandb=args.wandb, project=args.project, entity=args.entity,
                              max_failures=args.max_failures,
                              launcher=tuple(srun_prefix(nodes, devices, gpus)) if nodes else ())
    runner = Runner(sweep.to_dict(), space, store, sweep_dir=sweep_dir, root=root, slots=slots, count=count,
                    progress=progress, settings=settings, gpu_guard=gpu_guard)
    print(f"sweep {name}: {sweep.method}, {count} runs, {len(slots)} at a time; directory {sweep_dir}")
    try:
        code = runner.run()
    finally:
        store.close()
    if runner.stopping and code == 130:
        print(f"sweep {name} interrupted; rerun the same command to continue")
    if runner.best is not None:
        value, params, run_dir = runner.best
        print(visible(f"best run: {runner.metric}={value:.6g} in {sweep_dir / run_dir}"))
        for key, val in params.items():
            print(visible(f"  {key}: {val}"))
    else:
        print(visible(f"no run finished with a value of the sweep metric {runner.metric}"), file=sys.stderr)
        if code == 0:
            code = 1  # every run failed, or none logged the metric: a sweep with no result is an error
    print(f"sweep directory: {sweep_dir}  (python -m sweeps best {sweep_dir})")
    return requeue_after(runner.signal, code)
