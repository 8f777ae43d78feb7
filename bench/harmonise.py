"""Benchmark: index + harmonise the full real ChestX-ray14 (112k rows), CheXpert train (224k) and
PadChest (160k) label files on one core; target <= 10 s in all.

Label files come from the torchxrayvision wheel (test-time data source; no images, so the image
check is skipped). Baseline measured in the same run: a plain ``pandas.read_csv`` of the same files.
Run: ``python bench/harmonise.py``.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pyarrow
from cxrbench.datasets import build_index, write_index
from cxrbench.labels import harmonise, write_labels


def main() -> None:
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core, as the issue asks
    pyarrow.set_cpu_count(1)
    pyarrow.set_io_thread_count(1)
    spec = importlib.util.find_spec("torchxrayvision")
    data = Path(spec.submodule_search_locations[0]) / "data"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "nih").mkdir()
        (tmp / "chex").mkdir()
        (tmp / "pad").mkdir()
        with gzip.open(data / "Data_Entry_2017_v2020.csv.gz", "rb") as fi, open(tmp / "nih/Data_Entry_2017_v2020.csv", "wb") as fo:
            shutil.copyfileobj(fi, fo)
        ref = pd.read_csv(tmp / "nih/Data_Entry_2017_v2020.csv", usecols=["Image Index", "Patient ID"])
        test = ref["Patient ID"] % 4 == 0
        (tmp / "nih/test_list.txt").write_text("\n".join(ref.loc[test, "Image Index"]) + "\n")
        (tmp / "nih/train_val_list.txt").write_text("\n".join(ref.loc[~test, "Image Index"]) + "\n")
        with gzip.open(data / "chexpert_train.csv.gz", "rb") as fi, open(tmp / "chex/train.csv", "wb") as fo:
            shutil.copyfileobj(fi, fo)
        pd.read_csv(tmp / "chex/train.csv", nrows=0).to_csv(tmp / "chex/valid.csv", index=False)
        pad = "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"
        (tmp / "pad" / pad).symlink_to(data / pad)
        jobs = [("chestxray14", tmp / "nih", [tmp / "nih/Data_Entry_2017_v2020.csv"]),
                ("chexpert", tmp / "chex", [tmp / "chex/train.csv"]),
                ("padchest", tmp / "pad", [tmp / "pad" / pad])]

        t0 = time.perf_counter()
        for _, _, files in jobs:
            for f in files:
                pd.read_csv(f, low_memory=False)
        baseline = time.perf_counter() - t0

        total_rows = 0
        t0 = time.perf_counter()
        for adapter, root, _ in jobs:
            t = time.perf_counter()
            s = {"name": adapter, "dataset": {"adapter": adapter, "root": str(root), "label_set": f"study_{adapter}"},
                 "labels": {}, "splits": {}, "seed": 20230815}
            idx = build_index(s)
            write_index(idx, tmp / f"{adapter}.index.parquet")
            h = harmonise(idx, s)
            write_labels(h.labels, h.label_set, tmp / f"{adapter}.labels.parquet")
            dt = time.perf_counter() - t
            total_rows += len(idx)
            print(f"{adapter:12s} {len(idx):7d} rows -> {len(h.labels):7d} kept  {dt:5.2f} s  {len(idx) / dt:9.0f} rows/s")
        total = time.perf_counter() - t0
    print(f"{'total':12s} {total_rows:7d} rows             {total:5.2f} s  {total_rows / total:9.0f} rows/s "
          f"(target <= 10 s: {'OK' if total <= 10 else 'MISSED'})")
    print(f"baseline: plain pandas.read_csv of the same files {baseline:.2f} s; "
          f"index+harmonise+write / read_csv = {total / baseline:.2f}x")


if __name__ == "__main__":
    main()
