"""Sweeps for the X-ray LightningCLI: the in-run contract (sweeps.contract) and the orchestration
(README, "Architecture"). This file imports nothing, so that `import sweeps.contract` stays light.
"""
