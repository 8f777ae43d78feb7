"""The compute plan: GPU-hours, CPU-hours, disk and memory of a configuration before any job is submitted.

``model`` holds the cost model (FLOPs per image from PyTorch's counter, sustained throughput per GPU from
``resources/gpus.csv``, peak device memory), ``estimates`` applies it to every job of a config
(:func:`build_plan`, :func:`planned_resources` and the workflow's :func:`resource_table`,
:func:`plan_summary`), ``render`` prints it, ``measure`` writes
measured-throughput rows for ``gpus.csv`` and ``cli`` is ``cxrbench plan``. See docs/cluster.md, "Compute plan".
"""

from cxrbench.plan.estimates import (
    Plan,
    PlanJob,
    build_plan,
    plan_summary,
    planned_features_resources,
    planned_pretrain_resources,
    planned_resources,
    resource_table,
)
from cxrbench.plan.model import GpuSpec, ModelShape, PlanError, gpu_spec, load_gpus, model_shape

__all__ = [
    "GpuSpec",
    "ModelShape",
    "Plan",
    "PlanError",
    "PlanJob",
    "build_plan",
    "gpu_spec",
    "load_gpus",
    "model_shape",
    "plan_summary",
    "planned_features_resources",
    "planned_pretrain_resources",
    "planned_resources",
    "resource_table",
]
