"""Initial weights: the initialisation registry (config data), weight lookup and model construction.

``registry`` and ``hub`` import neither torch nor timm, so the Snakefile can check weights at parse
time cheaply; ``factory`` builds the timm model.
"""

from cxrbench.models.registry import InitSpec, WeightsMissing, init_spec, weights_problem

__all__ = ["InitSpec", "WeightsMissing", "init_spec", "weights_problem"]
