"""Benchmark: label-fraction subsets [0.01, 0.1, 1.0] and their counts on the full real ChestX-ray14 table
(112,120 images, 30,805 patients, 14 labels); target: seconds (issue 12).

Named label_fractions.py, not fractions.py: a script's folder is first on sys.path, and bench/fractions.py
would shadow the standard library's ``fractions`` (imported by jsonschema).

The labels table is built exactly as ``cxrbench index`` + ``cxrbench harmonise`` do, from the real
``Data_Entry_2017_v2020.csv`` shipped in the torchxrayvision wheel (stand-in official test list:
patient id % 4 == 0, as bench/harmonise.py; no image check). Only the subsets and the counts are timed.
The baseline, timed in the same run, is one ``groupby("patient_id").size()`` of the train rows (the least
any patient-grouped draw must do). Wall and CPU time of this process are printed with the load average.

Run: ``python bench/label_fractions.py [--repeat N]`` (best of N; default 3).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from cxrbench.datasets import build_index
from cxrbench.labels import harmonise
from cxrbench.labels.fractions import fraction_counts, label_fraction_subsets

FRACTIONS = [0.01, 0.1, 1.0]
SEED = 20230815


def _real_labels(data: Path, tmp: Path) -> pd.DataFrame:
    """The harmonised labels table of the full real ChestX-ray14 label file."""
    with gzip.open(data / "Data_Entry_2017_v2020.csv.gz", "rb") as fi, open(tmp / "Data_Entry_2017_v2020.csv", "wb") as fo:
        shutil.copyfileobj(fi, fo)
    ref = pd.read_csv(tmp / "Data_Entry_2017_v2020.csv", usecols=["Image Index", "Patient ID"])
    test = ref["Patient ID"] % 4 == 0  # stand-in official lists (the real ones are not in the wheel)
    (tmp / "test_list.txt").write_text("\n".join(ref.loc[test, "Image Index"]) + "\n")
    (tmp / "train_val_list.txt").write_text("\n".join(ref.loc[~test, "Image Index"]) + "\n")
    settings = {"name": "chestxray14", "labels": {}, "splits": {}, "seed": SEED,
                "dataset": {"adapter": "chestxray14", "root": str(tmp), "label_set": "study_chestxray14"}}
    return harmonise(build_index(settings), settings).labels


def _best(repeat: int, fn) -> tuple[float, float, object]:
    """(best wall s, its CPU s, last result) over ``repeat`` calls."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        w, c = time.perf_counter(), time.process_time()
        result = fn()
        run = (time.perf_counter() - w, time.process_time() - c)
        best = min(best, run)
    return best[0], best[1], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs; the best is reported")
    args = parser.parse_args()
    spec = importlib.util.find_spec("torchxrayvision")
    if spec is None:
        raise SystemExit("torchxrayvision wheel (the real label files) is not installed in this environment")
    data = Path(spec.submodule_search_locations[0]) / "data"
    with tempfile.TemporaryDirectory() as tmp_name:
        labels = _real_labels(data, Path(tmp_name))
    train = labels[labels["split"] == "train"]
    n_labels = sum(c.startswith("y_") for c in labels.columns)
    print(f"labels table: {len(labels):,} images, {labels['patient_id'].nunique():,} patients, {n_labels} labels; "
          f"train {len(train):,} images, {train['patient_id'].nunique():,} patients")
    load_before = os.getloadavg()
    base_wall, _, _ = _best(args.repeat, lambda: train.groupby("patient_id").size())
    sub_wall, sub_cpu, subsets = _best(args.repeat, lambda: label_fraction_subsets(labels, FRACTIONS, seed=SEED))
    cnt_wall, cnt_cpu, counts = _best(args.repeat, lambda: fraction_counts(labels, subsets, fractions=FRACTIONS))
    load_after = os.getloadavg()
    for f, rows in counts.groupby("fraction"):
        rarest = rows.loc[rows["n_pos"].idxmin()]
        print(f"fraction {f:<5}: {rows['n_images'].iloc[0]:7,} images ({rows['n_images'].iloc[0] / len(train):7.2%}), "
              f"{rows['n_patients'].iloc[0]:6,} patients, fewest positives {rarest['n_pos']} ({rarest['label']})")
    print(f"label_fraction_subsets {FRACTIONS}: wall {sub_wall:.3f} s, cpu {sub_cpu:.3f} s")
    print(f"fraction_counts:                     wall {cnt_wall:.3f} s, cpu {cnt_cpu:.3f} s")
    print(f"baseline groupby(patient_id).size() of train: wall {base_wall:.3f} s; subsets / baseline = "
          f"{sub_wall / base_wall:.1f}x")
    print(f"load average (1/5/15 min) before {load_before[0]:.2f}/{load_before[1]:.2f}/{load_before[2]:.2f}, "
          f"after {load_after[0]:.2f}/{load_after[1]:.2f}/{load_after[2]:.2f}")


if __name__ == "__main__":
    main()
