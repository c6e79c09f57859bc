"""Does selecting a configuration by k-fold CV pick the truly better one more often than
selecting it on one validation split? Printed figures, not a test.

Two configurations of the demo classifier on synthetic hand phantoms, one truly better (a
sensible learning rate) and one truly worse (a learning rate too high). For each split seed
both are trained (a) once, judged on the one validation split, and (b) with --cv.folds=K,
judged on the fold mean; each method picks the configuration with the higher validation
AUROC. Reported: how often each method picks the better one, the chosen configuration's test
AUROC (mean and spread over seeds; for CV the fold ensemble's), and the CPU time each costs.
"Better" is measured, not assumed: the mean test AUROC of each configuration over all runs.

    python benchmarks/cv_selection.py                    # 5 seeds x 5 folds (about 30 min on 2 cores)
    python benchmarks/cv_selection.py --seeds 2 --folds 3 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"good (lr 1e-3)": ["--model.lr=0.001"], "too high (lr 0.05)": ["--model.lr=0.05"]}


def run(args: list[str], out: Path) -> tuple[float, float, float]:
    """(best validation AUROC, test AUROC, CPU seconds) of one `cli.py fit`."""
    start = _children_cpu()
    proc = subprocess.run([sys.executable, "cli.py", "fit", *args, f"--run.root={out}"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    cpu = _children_cpu() - start
    run_dir = max((p for p in out.glob("*/*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    history = [json.loads(line) for line in (run_dir / "sweep_history.jsonl").read_text().splitlines()]
    report = json.loads((run_dir / "test_report.json").read_text())
    return max(r["val/auroc"] for r in history), report["metrics"]["auroc"]["estimate"], cpu


def _children_cpu() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="tiny images and epochs (seconds per run)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="cv_selection-"))
    size = 32 if args.quick else 64
    epochs = 1 if args.quick else args.epochs
    data = work / "data"  # one data set for every split seed (the demo's seed would follow data.split_seed)
    sys.path.insert(0, str(ROOT))
    from datamodules.synthetic import generate

    generate(data, body_part="hand", count=args.images, size=(128, 128), seed=0, severity=2.0)
    common = ["--config", "configs/demo.yaml", f"--data.root={data}", "--demo.body_part=null", f"--data.image_size={size}",
              "--data.batch_size=16", f"--trainer.max_epochs={epochs}", "--run.wandb=disabled",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
              "--eval.bootstrap_resamples=200", "--data.val_fraction=0.15", "--data.test_fraction=0.3"]
    results: dict = {"single": [], "cv": []}
    cpu = {"single": 0.0, "cv": 0.0}
    for seed in range(args.seeds):
        for method in ("single", "cv"):
            extra = [f"--data.split_seed={seed}", f"--seed_everything={seed}"]
            if method == "cv":
                extra += [f"--cv.folds={args.folds}", "--trainer.devices=2"]
            scores = {}
            for name, config in CONFIGS.items():
                val, test, seconds = run([*common, *config, *extra], work / "runs" / method / f"{seed}" / name[:4])
                scores[name] = (val, test)
                cpu[method] += seconds
            chosen = max(scores, key=lambda n: scores[n][0])
            results[method].append({"seed": seed, "chosen": chosen, "scores": scores})
            print(f"seed {seed} {method:6s}: " + ", ".join(f"{n}: val {v:.3f} test {t:.3f}"
                                                         for n, (v, t) in scores.items()) + f" -> {chosen}",
                  flush=True)
    truth = {n: statistics.fmean(r["scores"][n][1] for m in results.values() for r in m) for n in CONFIGS}
    better = max(truth, key=truth.get)
    summary = {"truth (mean test AUROC)": truth, "better": better, "seeds": args.seeds, "folds": args.folds}
    print(f"\ntruly better (mean test AUROC over all runs): {better}  "
          + ", ".join(f"{n}: {v:.3f}" for n, v in truth.items()))
    print(f"{'selection':<22}{'picks better':>14}{'chosen test AUROC':>20}{'spread (sd)':>13}{'CPU s':>9}")
    for method, label in (("single", "one validation split"), ("cv", f"{args.folds}-fold CV")):
        picks = sum(r["chosen"] == better for r in results[method])
        chosen = [r["scores"][r["chosen"]][1] for r in results[method]]
        sd = statistics.pstdev(chosen) if len(chosen) > 1 else 0.0
        summary[method] = {"picks_better": picks, "chosen_test_auroc_mean": statistics.fmean(chosen),
                           "chosen_test_auroc_sd": sd, "cpu_s": cpu[method]}
        print(f"{label:<22}{f'{picks}/{len(chosen)}':>14}{statistics.fmean(chosen):>20.3f}{sd:>13.3f}"
              f"{cpu[method]:>9.0f}")
    return summary


if __name__ == "__main__":
    main()
