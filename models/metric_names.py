"""The names of the metrics the classifier logs, per task: the one list that the model's metric
collection is built from and that sweeps check their metric against. No torch here, so that
`python -m sweeps generate|best|report` read it without loading torch and Lightning."""

from __future__ import annotations

# The sweep metric and checkpoint monitor when none is given.
DEFAULT_METRIC = "val/auroc"
# Metrics (without the stage prefix) for which lower is better: a sweep on them minimizes.
LOWER_IS_BETTER = ("loss", "ece")
# Argmax metrics of every task; the others are one-vs-rest (multiclass) or on the positive class (binary).
ARGMAX = ("acc", "balanced_acc")
BINARY = ("auroc", "average_precision", "ece", "f1", "sensitivity", "sensitivity_at_spec90", "specificity")
MULTICLASS = ("auroc", "ece", "f1")


def metric_keys(num_classes: int) -> list[str]:
    """What a task of `num_classes` classes computes, in the order torchmetrics' collections
    return it (each collection sorted by name)."""
    if num_classes == 2:
        return [*ARGMAX, *BINARY]
    return sorted({*ARGMAX, *MULTICLASS})


def logged_metric_names(num_classes: int, stage: str = "val") -> list[str]:
    """Every metric the classifier logs for `stage` on a task of `num_classes` classes, e.g.
    val/loss, val/auroc, ...; sweeps check their metric and objective against this list."""
    return [f"{stage}/loss", *(f"{stage}/{k}" for k in metric_keys(num_classes))]
