"""Test-set statistics with patient-level intervals (numpy only, no Lightning). The names that
training/ and sweeps/ import from the package; each module's job: README, "Architecture"."""

from evaluation.calibration import apply_temperature as apply_temperature
from evaluation.calibration import brier_score as brier_score
from evaluation.calibration import calibrated_temperature as calibrated_temperature
from evaluation.calibration import expected_calibration_error as expected_calibration_error
from evaluation.calibration import reliability_bins as reliability_bins
from evaluation.decision import called_positive as called_positive
from evaluation.patients import choose_patient_threshold as choose_patient_threshold
from evaluation.report import build_report as build_report
from evaluation.report import format_table as format_table
from evaluation.report import summary_metrics as summary_metrics
from evaluation.subgroups import check_columns as check_columns
from evaluation.subgroups import columns_of as columns_of
from evaluation.subgroups import parse_subgroups as parse_subgroups
from evaluation.subgroups import subgroup_report as subgroup_report
from evaluation.threshold import ThresholdChoice as ThresholdChoice
from evaluation.threshold import choose_threshold as choose_threshold
from evaluation.threshold import parse_threshold as parse_threshold
