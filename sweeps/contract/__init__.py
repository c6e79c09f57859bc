"""The in-run contract: what runs inside a training process started by a W&B agent or the
offline runner (README, "Architecture"). Import its modules directly.

This file imports nothing, on purpose: `python cli.py` installs the SIGTERM flag
(`sweeps.contract.signals`) before torch is imported, and a package that re-exported guard.py
or metric.py here would import torch first.
"""
