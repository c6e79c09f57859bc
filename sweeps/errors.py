"""The errors of the sweep tools: each names the file, key or value and what is allowed;
`python -m sweeps` prints one `error:` paragraph for any of them and exits 2."""

from __future__ import annotations


class SweepError(ValueError):
    """Bad input to a sweep tool."""


class UsageError(SweepError):
    """A command-line or file problem (missing file, not a sweep directory, ...)."""


class SweepConfigError(SweepError):
    """A sweep definition W&B or the CLI would reject; the message names the key."""


class ParameterError(SweepConfigError):
    """An unknown or invalid sweep parameter; the message names it and what is allowed."""


class RunnerError(SweepError):
    """Bad input for the offline runner."""
