"""Benchmark: the Numba paired bootstrap vs a loop calling sklearn's roc_auc_score per resample and label.

Size of the issue's target: 1,000 paired resamples x 14 labels x 2 models at N = 40,000 test images.
The sklearn loop is timed on a subset of resamples and extrapolated linearly (it is printed so); both
are checked to agree on that subset. Each Numba mode is timed ``--repeats`` times, alternating; ratios
are printed for the best and the median run. Run: `python bench/bootstrap.py [--n 40000] [--decimals 3]`.

Measured on the shared 2-core VM (AMD EPYC, AVX2; other jobs running, so every number moves by tens
of per cent between runs), defaults, 2 Numba threads, 3 bench runs, each against its own sklearn loop
(356-404 s):
- study mode (Youden refitted per resample): best 0.40-0.48 s = 750-880x, median 0.42-0.56 s =
  640-850x. The first call in a process is slower (0.77-0.87 s, about 410-520x), probably page
  faults on fresh memory (not investigated further).
- fixed threshold: best 0.32-0.41 s = 890-1110x, median 0.38-0.44 s = 860-950x.
- continuous scores (``--decimals 15``, every image its own tie group): study 1.3 s best (300x),
  fixed 0.86 s (460x).
The previous kernel (one sweep per (model, label) over all B resamples per image, float64 counts,
a full pass for the class totals) measured 143x / 376x here (162x study in the issue); timed in one
process, alternating with it: study 2.5 -> 0.6 s and fixed 1.0 -> 0.5 s at 3 decimals, study
5.3 -> 1.2 s and fixed 1.5 -> 0.8 s with continuous scores. AUROC differs from sklearn by at most
2.2e-16, and every output is bitwise identical to the previous kernel's (checked on randomised inputs).
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from cxrbench.evaluation.bootstrap import bootstrap_runs, draw_indices
from sklearn.metrics import roc_auc_score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=40_000)
    p.add_argument("--labels", type=int, default=14)
    p.add_argument("--models", type=int, default=2)
    p.add_argument("--resamples", type=int, default=1000)
    p.add_argument("--loop-resamples", type=int, default=5, help="resamples timed for the sklearn loop")
    p.add_argument("--decimals", type=int, default=3, help="scores rounded to this many decimals (ties)")
    p.add_argument("--threads", type=int, default=numba.config.NUMBA_NUM_THREADS)
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each numba mode (best and median shown)")
    a = p.parse_args()
    numba.set_num_threads(a.threads)

    rng = np.random.default_rng(0)
    y = (rng.random((a.models, a.n, a.labels)) < 0.15).astype(float)
    y[:, rng.random(a.n) < 0.02, 0] = np.nan  # some masked targets
    s = np.round(1 / (1 + np.exp(-(2 * y + rng.normal(size=y.shape)))), a.decimals)  # ties
    s = np.nan_to_num(s, nan=0.5)
    idx = draw_indices(a.n, n_resamples=a.resamples, seed=1)

    t = time.perf_counter()
    bootstrap_runs(y[:, :10], s[:, :10], draw_indices(10, n_resamples=2, seed=0))  # JIT compile / cache load
    compile_s = time.perf_counter() - t

    fixed_thr = np.full((a.models, a.labels), 0.5)
    study_times, fixed_times = [], []
    for _ in range(a.repeats):  # alternating, so that a burst of load on the shared VM hits both modes
        t = time.perf_counter()
        fast = bootstrap_runs(y, s, idx)
        study_times.append(time.perf_counter() - t)
        t = time.perf_counter()
        bootstrap_runs(y, s, idx, thresholds=fixed_thr)
        fixed_times.append(time.perf_counter() - t)

    k = a.loop_resamples
    t = time.perf_counter()
    worst = 0.0
    for b in range(k):
        for m in range(a.models):
            for j in range(a.labels):
                yy, ss = y[m, idx[b], j], s[m, idx[b], j]
                keep = ~np.isnan(yy)
                auc = roc_auc_score(yy[keep], ss[keep])
                worst = max(worst, abs(auc - fast.auroc[b, m, j]))
    loop_s = (time.perf_counter() - t) * a.resamples / k

    print(f"N={a.n} labels={a.labels} models={a.models} resamples={a.resamples} decimals={a.decimals} "
          f"numba threads={a.threads}")
    print(f"numba compile/cache load      {compile_s:8.2f} s")
    for name, times in (("Youden refit (study)", study_times), ("fixed threshold", fixed_times)):
        print(f"numba, {name:22s} {min(times):8.2f} s best of {a.repeats} (median {np.median(times):.2f}; all: "
              f"{' '.join(f'{t:.2f}' for t in times)})")
    print(f"sklearn loop (timed on {k} resamples, extrapolated linearly to {a.resamples}) {loop_s:8.2f} s")
    print(f"max |numba - sklearn| on those resamples: {worst:.2e}")
    for name, stat in (("best", min), ("median", np.median)):
        print(f"speed-up ({name}): study mode {loop_s / stat(study_times):7.1f}x, "
              f"fixed threshold {loop_s / stat(fixed_times):7.1f}x")


if __name__ == "__main__":
    main()
