"""Display names, footnote markers and the shared heatmap colour scale of the evaluation outputs."""

from __future__ import annotations

import pandas as pd
from cxrbench.evaluation.display import NO_RUN, Footnotes, display_name, few_positives, no_run_reason
from cxrbench.evaluation.figures import heatmap_scale


def test_display_names_come_from_the_canonical_map() -> None:
    assert display_name("pleural_effusion") == "Pleural effusion"
    assert display_name("nodule_or_mass") == "Nodule/Mass"
    assert display_name("ild") == "ILD"
    assert display_name("support_devices") == "Support devices"  # no readable study name: made readable
    assert display_name("macro") == "Macro mean"
    assert display_name("Hernia") == "Hernia"  # a source name that is already readable stays


def test_footnotes_keep_one_marker_per_reason_in_order() -> None:
    notes = Footnotes()
    reason = no_run_reason("mimic_sl", "mimic", {"mimic_sl": "mimic"})
    assert notes.mark(NO_RUN, reason) == "(a)" and notes.mark(NO_RUN, reason) == "(a)"
    notes.mark("d", "few positives")
    assert notes.text() == f"(a) {reason}. (d) few positives."
    assert "pre-training set of mimic_sl" in reason


def test_few_positives_counts_the_rarer_class() -> None:
    assert few_positives(3, 500, min_positives=10) and few_positives(500, 2, min_positives=10)
    assert not few_positives(10, 10, min_positives=10)


def test_heatmap_scale_is_shared_and_rounded() -> None:
    metrics = pd.DataFrame({"dataset": ["a", "a", "b"], "auroc_boot_mean": [0.62, float("nan"), 0.971]})
    assert heatmap_scale(metrics) == (60.0, 100.0)
    assert heatmap_scale(metrics.iloc[:0]) == (50.0, 100.0)
