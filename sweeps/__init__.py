"""Sweeps for the X-ray LightningCLI, in two kinds of code:

* sweeps.contract -- the in-run contract: what runs inside a training process (stop flag,
  run guard, sweep metric, conditional parameters, history). Imported by the CLI; imports
  nothing from the rest of this package.
* the orchestration, which talks to training only through argv and the files a run writes:
  sweeps.files (presets, parameter names, building and checking sweep files),
  sweeps.runner (the offline runner: storage, jobs, scheduling; W&B agents),
  sweeps.analysis (best run, export, HTML report), sweeps.hyperband (W&B's stopping rule),
  and sweeps.main, the `python -m sweeps` command line.

This file imports nothing, so that `import sweeps.contract` stays light.
"""
