"""Benchmark: the Numba paired bootstrap vs a loop calling sklearn's roc_auc_score per resample and label.

Size of the issue's target: 1,000 paired resamples x 14 labels x 2 models at N = 40,000 test images.
The sklearn loop is timed on a subset of resamples and extrapolated linearly (it is printed so); both
are checked to agree on that subset. Run: `python bench/bootstrap.py [--n 40000] [--loop-resamples 5]`.
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

    t = time.perf_counter()
    fast = bootstrap_runs(y, s, idx)
    fast_s = time.perf_counter() - t
    t = time.perf_counter()
    bootstrap_runs(y, s, idx, thresholds=np.full((a.models, a.labels), 0.5))
    fixed_s = time.perf_counter() - t

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
    print(f"numba, Youden refit (study)   {fast_s:8.2f} s")
    print(f"numba, fixed threshold        {fixed_s:8.2f} s")
    print(f"sklearn loop (timed on {k} resamples, extrapolated linearly to {a.resamples}) {loop_s:8.2f} s")
    print(f"max |numba - sklearn| on those resamples: {worst:.2e}")
    print(f"speed-up: study mode {loop_s / fast_s:7.1f}x, fixed threshold {loop_s / fixed_s:7.1f}x")


if __name__ == "__main__":
    main()
