"""Sweeps for the X-ray LightningCLI: W&B sweep files, presets, callbacks, offline runner."""
