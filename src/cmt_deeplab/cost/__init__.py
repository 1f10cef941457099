"""The cost of a model: parameters, MACs, latency / FPS and peak memory, beside the paper's
Table 2 (``cmt-deeplab cost``, ``cmt-deeplab models`` and the demo's cost section)."""

from cmt_deeplab.cost.measure import (
    BACKENDS,
    Backend,
    CostRow,
    bf16_backend,
    count_model_parameters,
    measure_cost,
    measure_training_memory,
)
from cmt_deeplab.cost.paper import PAPER_TABLE2

__all__ = [
    "BACKENDS",
    "PAPER_TABLE2",
    "Backend",
    "CostRow",
    "bf16_backend",
    "count_model_parameters",
    "measure_cost",
    "measure_training_memory",
]
