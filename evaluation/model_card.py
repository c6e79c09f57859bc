"""model_card.md beside test_report.json (README, "Model card"): written from the run's own files
only (and a sweep's facts), so every figure on it is the report's. Names no file, path or patient:
counts, group labels and settings only; what only a person can state is a marked blank (BLANK)."""

from __future__ import annotations

import json
from typing import Any, Optional

import yaml

from evaluation.external import format_difference
from evaluation.report import SUBGROUP_FIGURES, figures, per_class_counts

CARD_FILE = "model_card.md"
BLANK = "**[to be completed by the authors]**"


def _fig(iv: Optional[dict]) -> str:
    if not iv or iv.get("estimate") is None:
        return "n/a |  | "
    ci = "" if iv.get("ci_low") is None else f"{iv['ci_low']:.3f}–{iv['ci_high']:.3f}"
    n_eff = f" (n_eff={iv['n_eff']:.1f})" if iv.get("n_eff") is not None else ""
    return f"{iv['estimate']:.3f} | {ci} | {iv.get('method', '')}{n_eff}"


def _with_ci(iv: Optional[dict]) -> str:
    estimate, ci, _ = _fig(iv).split(" | ")
    return f"{estimate} ({ci})" if ci else estimate


def _figures_table(section: dict, label: str) -> list[str]:
    rows = [f"| {label} figure | estimate | 95% CI | method |", "|---|---|---|---|"]
    return rows + [f"| {name} | {_fig(iv)} |" for name, iv in figures(section).items()]


def _data(report: dict) -> list[str]:
    data = report.get("data")
    out = ["## Data", "_TRIPOD+AI 5a, 6a, 7, 10, 12a, 20a-b, 21; CLAIM 7-10, 19-21, 33-34_", ""]
    if not data:
        return out + [f"Test split only (the run recorded no data summary): {report['counts']['images']} images, "
                      f"{report['counts']['patients']} patients.", ""]
    names = report["class_names"]
    out += ["| split | images | patients | " + " | ".join(f"{n} images/patients" for n in names) + " |",
            "|---" * (3 + len(names)) + "|"]
    for split, c in data["splits"].items():
        per = " | ".join(f"{c['images_per_class'][n]}/{c['patients_per_class'][n]}" for n in names)
        out.append(f"| {split} | {c['images']} | {c['patients']} | {per} |")
    how = data["split_method"]
    made = (f"made here at patient level, stratified by label (seed {how['seed']}, validation fraction "
            f"{how['val_fraction']}, test fraction {how['test_fraction']}) where not given in the data")
    out += ["", f"- Splits: {'given in the data; ' if how['given_in_data'] else ''}{made}; no patient in two splits."
            + (f" Cross-validation: {how['folds']} patient-level folds over train and validation." if how["folds"] else ""),
            f"- Patient ids: {'given' if data['patient_ids'] else 'none: each image counts as its own patient'}.",
            f"- Layout: {data['layout']}; formats: " + ", ".join(f"{k} {v}" for k, v in sorted(data["formats"].items())),
            f"- Image sizes (rows x cols, {data['image_sizes']['sampled']} headers read): "
            + (f"{_size(data['image_sizes']['min'])} to {_size(data['image_sizes']['max'])}, most often "
               f"{_size(data['image_sizes']['most_common'])}" if data["image_sizes"]["min"] else "unknown")
            + f"; network input {data['input_size']} px (aspect kept, padded).",
            f"- Unreadable images left out: {data['skipped_unreadable']}.",
            f"- Data sources, dates, eligibility, reference standard and annotators, de-identification: {BLANK}", ""]
    return out


def _size(s: list) -> str:
    return f"{s[0]}x{s[1]}"


def _model(report: dict, config: dict, sweep: Optional[dict]) -> list[str]:
    model, trainer, data = config.get("model") or {}, config.get("trainer") or {}, config.get("data") or {}
    weights = model.get("weights", "none")
    weights = weights if weights in ("none", "default") else "a local weights file"
    training = report.get("training") or {}
    best = training.get("best_epoch") or []
    selected = (f"{sweep['method']} sweep `{sweep['name']}` of {sweep['trials']} trials ({sweep['completed']} "
                f"completed), best by {sweep['metric']} on validation") if sweep else \
        "not known to the run (`python -m sweeps report` fills this in for a sweep's best run)"
    folds = (config.get("cv") or {}).get("folds") or 0
    return ["## Model and training", "_TRIPOD+AI 12c, 22; CLAIM 22-27_", "",
            f"- Backbone: {model.get('backbone')}; initial weights: {weights}; classes: "
            + ", ".join(report["class_names"]) + f" (positive: {report['class_names'][-1]}).",
            f"- Training: at most {trainer.get('max_epochs')} epochs, batch size {data.get('batch_size')}, "
            f"learning rate {model.get('lr')}, balancing {data.get('balancing')}; tested weights from epoch "
            + (", ".join(map(str, best)) if best else "unknown") + " (best on validation)"
            + (f"; fold ensemble of {folds} models." if folds else "."),
            f"- Configuration chosen by: {selected}.", ""]


def _evaluation(report: dict) -> list[str]:
    ci, th = report["ci"], report.get("threshold")
    out = ["## Evaluation", "_TRIPOD+AI 12e, 23a-b; CLAIM 28-29, 32, 35-36_", ""]
    if th:
        how = f"fallback ({th['reason']})" if th["fallback"] else f"rule `{th['rule']}` chosen on validation"
        out.append(f"- Operating point: threshold {th['value']:.4g}, {how}; never chosen on test data.")
    out += [f"- Intervals: {100 * ci['confidence']:g}% {ci['method']} bootstrap, {ci['n_resamples']} resamples by "
            f"{ci['resampling_unit']} (seed {ci['seed']}); proportions at 0 or 1 get the exact Clopper-Pearson "
            "interval at the effective sample size (the method column says which).", "",
            *_figures_table(report, "test (image level)"), ""]
    patients = report.get("patient_level")
    if patients:
        out += [f"Patient level ({patients['aggregation']} of each patient's images; {patients.get('threshold_note')}):",
                "", *_figures_table(patients, "test (patient level)"), ""]
    t = report.get("temperature") or {}
    out.append(f"- Calibration: ECE {report['calibration']['ece']['estimate']:.3f}, Brier "
               f"{report['calibration']['brier']['estimate']:.3f} ({report['calibration']['n_bins']} bins); temperature "
               f"{t.get('value', 1.0):.3g}" + (" fitted on validation" if t.get("fitted_on_validation") else "")
               + (f" (fallback: {t['reason']})" if t.get("fallback") else "") + ".")
    for column in (report.get("subgroups") or {}).get("by", []):
        for g in column["groups"]:
            shown = "; ".join(f"{k} {_fig(g['metrics'].get(k)).split(' | ')[0]}" for k in SUBGROUP_FIGURES)
            out.append(f"- Subgroup {column['column']}={g['group']}: {g['counts']['images']} images, "
                       f"{g['counts']['patients']} patients; {shown}" + (f" ({g['note']})" if g["note"] else ""))
    for site in report.get("external") or []:
        c = site["report"]["counts"]
        out += ["", f"External test `{site['name']}`: {c['images']} images, {c['patients']} patients "
                f"(images/patients per class: {per_class_counts(c, report['class_names'])}); the whole data "
                "set, scored at site A's operating point and temperature. "
                "Changed: the 95% interval of the difference excludes 0 (MOVER from the two intervals).", "",
                "| figure | internal | external | difference | changed |", "|---|---|---|---|---|"]
        for level, prefix in (("image_level", ""), ("patient_level", "patient: ")):
            for row in site["comparison"][level]:
                changed = {True: "yes", False: "no"}.get(row["changed"], "n/a")
                out.append(f"| {prefix}{row['figure']} | {_with_ci(row['internal'])} | {_with_ci(row['external'])} | "
                           f"{format_difference(row['difference'])} | {changed} |")
    return out + [""]


def limitations(report: dict) -> list[str]:
    """What the run can state about itself."""
    notes, th, t = [], report.get("threshold") or {}, report.get("temperature") or {}
    if th.get("fallback"):
        notes.append(f"The threshold is a fallback ({th['reason']}), not an operating point chosen on validation.")
    if t.get("fallback"):
        notes.append(f"Temperature scaling was asked for but not applied: {t['reason']}.")
    if report["ci"]["resampling_unit"] != "patient":
        notes.append("The data names no patients: each image counts as one, so intervals are too narrow if "
                     "patients have several images.")
    small = [f"{c['column']}={g['group']}" for c in (report.get("subgroups") or {}).get("by", [])
             for g in c["groups"] if g["note"]]
    if small:
        notes.append("Subgroups too small for their intervals to mean much: " + ", ".join(small) + ".")
    few = min(report["counts"]["patients_per_class"].values())
    if few < 30:
        notes.append(f"The test split holds only {few} patients of its smallest class: wide intervals.")
    for site in report.get("external") or []:
        changed = [r["figure"] for r in site["comparison"]["image_level"] if r["changed"]]
        if changed:
            notes.append(f"At the external site `{site['name']}` these changed beyond their intervals: "
                         + ", ".join(changed) + ".")
    if not report.get("external"):
        notes.append("No external validation: performance at other sites, scanners or populations is unknown.")
    return notes


def model_card_text(report_json: str, config_yaml: Optional[str], experiment: str,
                    sweep: Optional[dict] = None) -> str:
    """The card of a finished run from the text of its test_report.json and config.yaml (the
    callers read them from the run directory and write the card atomically beside them)."""
    report = json.loads(report_json)
    config: dict[str, Any] = (yaml.safe_load(config_yaml) or {}) if config_yaml else {}
    experiment = (config.get("run") or {}).get("experiment") or experiment
    task = f"{report['task']} classification of radiographs ({', '.join(report['class_names'])})"
    lines = [f"# Model card: {experiment}", "",
             "_Written from this run's test_report.json and config.yaml (every figure is the report's). Section "
             "headings name the TRIPOD+AI (2024) and CLAIM (2020 numbering) items they answer; "
             f"{BLANK} marks what only a person can state._", "",
             "## Intended use", "_TRIPOD+AI 3a-b, 15; CLAIM 3-4, 6_", "",
             f"- Task (experiment `{experiment}`): {task}; output: a probability per class and the decision at the "
             "operating point below.",
             f"- Clinical setting, intended users, the decision it supports, and uses it is not meant for: {BLANK}", "",
             *_data(report), *_model(report, config, sweep), *_evaluation(report),
             "## Known limitations", "_TRIPOD+AI 26; CLAIM 38_", "",
             *[f"- {n}" for n in limitations(report)], f"- Further limitations: {BLANK}", "",
             "## Items only a person can answer", "",
             f"- Outcome / reference standard definition (TRIPOD+AI 8; CLAIM 14-18): {BLANK}",
             f"- Ethics approval and consent (TRIPOD+AI 17): {BLANK}",
             f"- Funding, conflicts, protocol, registration, data and code availability (TRIPOD+AI 18; CLAIM 40-42): {BLANK}",
             f"- Patient and public involvement (TRIPOD+AI 19): {BLANK}",
             f"- Fairness considerations beyond the subgroups above (TRIPOD+AI 14): {BLANK}", ""]
    return "\n".join(lines)
