"""Label harmonisation: canonical findings, uncertainty policies, view filters, patient-grouped
splits and the validated ``labels.parquet`` contract (docs/contracts.md section 2, docs/labels.md).

Downstream stages use :func:`read_labels` and, for the MIMIC-supervised arm, :func:`overlap_labels`.
"""

from __future__ import annotations

from cxrbench.labels.canonical import (
    canonical_findings,
    label_presets,
    overlap_labels,
    resolve_label_set,
    source_rules,
)
from cxrbench.labels.harmonise import Harmonised, HarmoniseError, harmonise
from cxrbench.labels.schema import LabelsSchemaError, read_labels, validate_labels, write_labels
from cxrbench.labels.splits import SplitError

__all__ = [
    "HarmoniseError",
    "Harmonised",
    "LabelsSchemaError",
    "SplitError",
    "canonical_findings",
    "harmonise",
    "label_presets",
    "overlap_labels",
    "read_labels",
    "resolve_label_set",
    "source_rules",
    "validate_labels",
    "write_labels",
]
