"""The in-run contract (README, "Architecture"). This file imports nothing, on purpose: cli.py
installs the SIGTERM flag (`sweeps.contract.signals`) before torch is imported, and re-exporting
guard.py or metric.py here would import torch first.
"""
