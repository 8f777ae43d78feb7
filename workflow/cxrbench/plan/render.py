"""Printing a :class:`~cxrbench.plan.estimates.Plan`: a one-screen table, CSV rows or JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from cxrbench.plan.estimates import Plan, PlanJob
from cxrbench.runkey import format_fraction

__all__ = ["render", "render_csv", "render_json", "render_table", "summary_rows"]

FORMATS = ("table", "csv", "json")
_AXIS_TITLES = {"init": "initialisation", "dataset": "dataset", "size": "size (px)", "regime": "regime",
                "fraction": "label fraction", "seed": "seed"}


def _h(hours: float) -> str:
    """Hours, readable at every scale: 12 s, 4.5 min, 3.2 h, 1,234 h."""
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.1f} min"
    if hours >= 100:
        return f"{hours:,.0f} h"
    return f"{hours:.1f} h"


def _value(name: str, value: Any) -> str:
    if value is None:
        return "(shared)"
    return format_fraction(value) if name == "fraction" else str(value)


def summary_rows(plan: Plan) -> list[dict[str, Any]]:
    """Long-format totals: one row for all jobs, one per job kind, one per value of every grid axis."""
    rows = [{"group": "total", "value": "all", **plan.total()}]
    for kind in ("train", "pretrain", "features", "external"):
        jobs = [j for j in plan.jobs if j.kind == kind]
        if jobs:
            rows.append({"group": "kind", "value": kind, **plan.total(jobs)})
    for axis in _AXIS_TITLES:
        for value, total in plan.by_axis(axis).items():
            rows.append({"group": axis, "value": _value(axis, value), **total})
    return rows


def _line(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def _grid(header: list[str], body: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return [_line(header, widths), *(_line(r, widths) for r in body)]


def _job_cells(j: PlanJob) -> list[str]:
    return [j.kind, j.init, j.dataset, str(j.size), j.regime or "", _value("fraction", j.fraction).replace(
        "(shared)", ""), "" if j.seed is None else str(j.seed), j.target or "", f"{j.images:,}",
        f"{j.epochs_expected}/{j.epochs_max}" if j.epochs_max else "", _h(j.device_h_expected), _h(j.device_h_max),
        f"{j.peak_mem_gib:.1f}"]


def render_table(plan: Plan, *, jobs: bool = False) -> str:
    """The plan as text: device, totals, per dataset, per axis value (axes with several values), optionally jobs."""
    g = plan.gpu
    total = plan.total()
    out = [
        f"Compute plan on {g.gpu}: {g.peak_tflops(plan.precision):g} TFLOP/s peak {plan.precision} x MFU {plan.mfu:.2f}",
        f"  (gpus.csv source: {g.source})",
        (f"  {total['jobs']:,} jobs: {_h(total['device_h_expected'])} expected with early stopping, "
        f"{_h(total['device_h_max'])} at most (training {_h(total['train_h_expected'])} / "
        f"{_h(total['train_h_max'])}, inference and features {_h(total['inference_h'])})"),
    ]
    mem = max((j.peak_mem_gib for j in plan.jobs), default=0.0)
    fits = "fits" if mem <= g.memory_gb * 1e9 / 2**30 else "DOES NOT FIT"
    out.append(f"  peak device memory per job {mem:.1f} GiB ({fits} in {g.memory_gb:g} GB); "
               f"CPU preprocessing {_h(sum(d.preprocess_cpu_h for d in plan.datasets))}; disk "
               f"{sum(d.png_gb + d.cache_gb + d.features_gb for d in plan.datasets):,.1f} GB")
    out.append("")
    body = []
    for d in plan.datasets:
        jobs_ds = [j for j in plan.jobs if j.dataset == d.dataset and j.size == d.size]
        t = plan.total(jobs_ds)
        body.append([d.dataset, str(d.size), f"{d.images.train:,}/{d.images.val:,}/{d.images.test:,}",
                     _h(t["device_h_expected"]), _h(t["device_h_max"]), _h(d.preprocess_cpu_h), f"{d.png_gb:,.1f}",
                     f"{d.cache_gb:,.1f}", f"{d.features_gb:,.2f}"])
    out += _grid(["dataset", "px", "train/val/test", "dev exp", "dev max", "prep CPU", "PNG GB", "cache GB",
                  "feat GB"], body)
    for axis, title in _AXIS_TITLES.items():
        values = plan.by_axis(axis)
        if axis not in ("init", "dataset") and len([v for v in values if v is not None]) < 2:
            continue
        if axis == "dataset":
            continue  # the dataset table above
        out.append("")
        body = [[_value(axis, v), f"{t['jobs']:,}", _h(t["device_h_expected"]), _h(t["device_h_max"]),
                 f"{100 * t['device_h_max'] / total['device_h_max']:.0f} %" if total["device_h_max"] else "-"]
                for v, t in values.items()]
        out += _grid([title, "jobs", "dev exp", "dev max", "share"], body)
    if jobs:
        out.append("")
        header = ["kind", "init", "dataset", "px", "regime", "frac", "seed", "target", "images", "epochs", "dev exp",
                  "dev max", "GiB"]
        out += _grid(header, [_job_cells(j) for j in plan.jobs])
    sources: dict[str, list[str]] = {}
    for d in plan.datasets:
        names = sources.setdefault(d.images.source, [])
        if d.dataset not in names:
            names.append(d.dataset)
    out.append("")
    out.append("image counts from " + "; ".join(f"{src}: {', '.join(names)}" for src, names in sources.items()))
    if any(not math.isfinite(j.device_h_max) for j in plan.jobs):
        out.append("warning: some estimates are not finite")
    return "\n".join(out)


def render_csv(plan: Plan, *, jobs: bool = False) -> str:
    """CSV: the per-job rows with ``jobs``, else the long-format totals of :func:`summary_rows`."""
    rows = [j.row() for j in plan.jobs] if jobs else summary_rows(plan)
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buf.getvalue()


def render_json(plan: Plan, *, jobs: bool = False) -> str:
    """JSON: device, totals, per-dataset costs with their count sources, and (with ``jobs``) every job."""
    value: dict[str, Any] = {
        "device": {**plan.gpu.__dict__, "precision": plan.precision, "mfu_used": plan.mfu},
        "totals": summary_rows(plan),
        "datasets": [{"dataset": d.dataset, "size": d.size, **{k: getattr(d.images, k) for k in
                      ("train", "val", "test", "source")}, "preprocess_cpu_h": d.preprocess_cpu_h,
                      "png_gb": d.png_gb, "cache_gb": d.cache_gb, "features_gb": d.features_gb}
                     for d in plan.datasets],
    }
    if jobs:
        value["jobs"] = [j.row() for j in plan.jobs]
    return json.dumps(value, indent=1)


def render(plan: Plan, *, fmt: str = "table", jobs: bool = False) -> str:
    """The plan in one of :data:`FORMATS`."""
    if fmt == "table":
        return render_table(plan, jobs=jobs)
    if fmt == "csv":
        return render_csv(plan, jobs=jobs)
    if fmt == "json":
        return render_json(plan, jobs=jobs)
    raise ValueError(f"unknown format {fmt!r} (have: {', '.join(FORMATS)})")
