"""Preprocessing benchmark: tuned path vs the naive baseline, measured in the same run, printed as ratios.

Baseline (the issue's definition): pydicom ``pixel_array`` -> float min-max -> ``scipy.ndimage.zoom`` (order 2,
the study's resize) -> PIL PNG save at default settings. Run: ``python bench/preprocess.py [--quick] [--dag N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import scipy.ndimage as ndi
from cxrbench.imaging.pipeline import Recipe, convert
from cxrbench.imaging.write import write_png
from cxrbench.preprocess.runner import process_shard
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, generate_uid


def radiograph(rows: int, cols: int, bits: int, seed: int) -> np.ndarray:
    """Smooth chest-like field plus noise, so PNG/J2K compress like real radiographs, not like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols].astype(np.float32)
    body = np.exp(-(((xx - cols / 2) / (0.45 * cols)) ** 6 + ((yy - rows / 2) / (0.5 * rows)) ** 6))
    lungs = sum(np.exp(-(((xx - cx * cols) / (0.13 * cols)) ** 2 + ((yy - 0.45 * rows) / (0.25 * rows)) ** 2)) for cx in (0.33, 0.67))
    img = 0.2 + 0.6 * body - 0.35 * lungs + rng.normal(0, 0.01, (rows, cols)).astype(np.float32)
    return np.clip(img * (2**bits - 1), 0, 2**bits - 1).astype(np.uint16)


def write_dicom(path: Path, arr: np.ndarray, bits: int, *, j2k: bool = False) -> None:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.SOPInstanceUID = generate_uid()
    ds.set_pixel_data(arr, photometric_interpretation="MONOCHROME1", bits_stored=bits)
    if j2k:
        ds.compress(JPEG2000Lossless, encoding_plugin="pylibjpeg")
    ds.save_as(path, enforce_file_format=True)


def baseline(path: Path, out: Path, size: int) -> None:
    arr = pydicom.dcmread(path).pixel_array.astype(np.float64)
    arr = (arr - arr.min()) / (arr.max() - arr.min())
    arr = ndi.zoom(arr, (size / arr.shape[0], size / arr.shape[1]), order=2)
    Image.fromarray(np.clip(arr * 255, 0, 255).astype(np.uint8)).save(out)


def tuned(path: Path, out: Path, recipe: Recipe) -> None:
    write_png(out, convert(path, recipe)[0])


def timeit(fn, files: list[Path], repeat: int = 1) -> float:
    """Seconds per image (best of ``repeat`` passes over the files)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for f in files:
            fn(f)
        best = min(best, (time.perf_counter() - start) / len(files))
    return best


def dag_cost(tmp: Path, n_images: int) -> None:
    """Time ``snakemake -n`` for a plan whose shard jobs declare n_images per-image inputs."""
    repo = Path(__file__).resolve().parents[1]
    data = tmp / "dag" / "data"
    data.mkdir(parents=True)
    ids = [f"{k:07d}" for k in range(n_images)]
    for i in ids:
        (data / f"{i}.png").write_bytes(b"x")
    (tmp / "dag/results/d").mkdir(parents=True)
    pd.DataFrame({"image_id": ids, "source_path": [f"{i}.png" for i in ids], "split": "train"}).to_parquet(
        tmp / "dag/results/d/labels.parquet")
    (tmp / "dag/config.yaml").write_text(
        "datasets: {d: {adapter: chestxray14, root: data}}\n"
        "initialisations: {r: {model: m, source: none}}\n"
        "preprocess: {shard_size: 2000, cache: false}\n")
    (tmp / "dag/Snakefile").write_text(
        f'configfile: "config.yaml"\ninclude: "{repo}/workflow/rules/common.smk"\n'
        f'include: "{repo}/workflow/rules/preprocess.smk"\nrule all:\n    input: preprocess_targets()\n')
    exe = shutil.which("snakemake") or str(Path(sys.executable).parent / "snakemake")
    # Run the plan (the checkpoint) only, then time a dry run that must list every shard job's inputs.
    subprocess.run([exe, "--cores", "1", "--quiet", "all", "--until", "shard_plan"], cwd=tmp / "dag", check=True,
                   capture_output=True)
    start = time.perf_counter()
    res = subprocess.run([exe, "-n", "--cores", "1", "--quiet", "all"], cwd=tmp / "dag", capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    start = time.perf_counter()
    subprocess.run([exe, "--version"], capture_output=True, check=True)
    base = time.perf_counter() - start
    print(f"snakemake -n with {n_images} per-image inputs in {n_images // 2000 or 1}+ shard jobs: {wall:.1f} s "
          f"(rc {res.returncode}; bare snakemake start {base:.1f} s) -> "
          f"{(wall - base) / n_images * 1e6:.0f} us per declared image")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (smoke run)")
    parser.add_argument("--dag", type=int, default=0, help="also time snakemake -n with this many source images")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    n = 2 if args.quick else 4
    size = 512
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        dcm = []
        for k in range(n):
            p = tmp / f"u{k}.dcm"
            write_dicom(p, radiograph(3000, 2500, 12, k), 12)
            dcm.append(p)
        j2k = tmp / "j.dcm"
        write_dicom(j2k, radiograph(3000, 2500, 12, 99), 12, j2k=True)
        png8 = sorted((Path(__file__).resolve().parents[2] / "shared" / "samples" / "chestxray14").glob("*.png"))
        png16 = tmp / "p16.png"
        Image.fromarray(radiograph(2000, 1800, 12, 5)).save(png16)
        jpg = tmp / "a.jpg"
        Image.fromarray((radiograph(2500, 2000, 8, 6)).astype(np.uint8)).save(jpg, quality=95)
        out = tmp / "o.png"

        paper = Recipe("paper", size)
        standard = Recipe("standard", size)
        tuned(dcm[0], out, paper), tuned(dcm[0], out, standard)  # compile numba kernels outside the timings
        t_base = timeit(lambda f: baseline(f, out, size), dcm)
        t_paper = timeit(lambda f: tuned(f, out, paper), dcm, repeat=2)
        t_std = timeit(lambda f: tuned(f, out, standard), dcm, repeat=2)
        print(f"uncompressed 12-bit DICOM 3000x2500 -> {size} PNG, one core:")
        print(f"  baseline {t_base * 1e3:7.1f} ms/img | paper {t_paper * 1e3:6.1f} ms ({t_base / t_paper:4.1f}x) | "
              f"standard {t_std * 1e3:6.1f} ms ({t_base / t_std:4.1f}x)")

        full = Recipe("paper", size, reduced_decode=False)
        t_full = timeit(lambda f: tuned(f, out, full), [j2k], repeat=2)
        t_red = timeit(lambda f: tuned(f, out, paper), [j2k], repeat=2)
        t_red224 = timeit(lambda f: tuned(f, out, Recipe("paper", 224)), [j2k], repeat=2)
        print(f"JPEG 2000 lossless DICOM 3000x2500: full-resolution decode {t_full * 1e3:.0f} ms/img; reduced decode "
              f"-> 512 {t_red * 1e3:.0f} ms ({t_full / t_red:.1f}x), -> 224 {t_red224 * 1e3:.0f} ms ({t_full / t_red224:.1f}x)")

        print("images/s per core (paper mode, 512 px, PNG written):")
        for name, files in [("dicom-uncompressed-12bit 3000x2500", dcm), ("dicom-j2k-lossless 3000x2500", [j2k]),
                            ("png8 NIH 1024x1024", png8), ("png16 2000x1800", [png16]), ("jpg8 2500x2000", [jpg])]:
            t = timeit(lambda f: tuned(f, out, paper), files, repeat=2)
            print(f"  {name:38s} {1 / t:7.1f} img/s")

        # 2 worker processes vs 1 on the same shard. Real shards hold 2,000 images by default, so the shard here is
        # large enough (800 images; BENCH_SHARD_IMAGES overrides) that starting the worker pool (imports in each
        # process, ~0.5 s) does not dominate as it would on a toy shard.
        reps = max(1, int(os.environ.get("BENCH_SHARD_IMAGES", "800")) // len(dcm))
        members = pd.DataFrame({"image_id": [f"i{k}" for k in range(reps * len(dcm))],
                                "source_path": [p.name for p in dcm] * reps})
        times = {}
        for workers in (1, 2):
            start = time.perf_counter()
            m = process_shard(members, root=tmp, out_dir=tmp / f"w{workers}", recipe=paper, workers=workers)
            times[workers] = time.perf_counter() - start
            assert (m["status"] == "ok").all()
        print(f"shard of {len(members)} DICOMs: 1 worker {times[1]:.2f} s, 2 workers {times[2]:.2f} s "
              f"-> {times[1] / times[2]:.2f}x (machine has {os.cpu_count()} cores, shared)")

        # Training cache: PNG decode vs memmap row read.
        arr = np.lib.format.open_memmap(tmp / "c.npy", mode="w+", dtype=np.uint8, shape=(64, size, size))
        arr[:] = 1
        arr.flush()
        pngs = sorted((tmp / "w1").glob("*.png"))
        t_png = timeit(lambda f: np.asarray(Image.open(f)), pngs, repeat=3)
        mm = np.load(tmp / "c.npy", mmap_mode="r")
        rows = list(range(64))
        t_mm = timeit(lambda r: np.array(mm[r]), rows, repeat=3)
        print(f"training read {size}px: PNG decode {t_png * 1e3:.2f} ms, memmap row {t_mm * 1e3:.3f} ms "
              f"({t_png / t_mm:.0f}x)")
        if args.dag:
            dag_cost(tmp, args.dag)


if __name__ == "__main__":
    main()
