"""Loss terms recomputed in backward: keep their inputs, drop their intermediates.

A COCO training step keeps more memory for the loss than for the network once the network's
blocks are recomputed (``model.recompute=blocks``): every output (the final one and each
layer's auxiliary one) saves its softmaxes over the slots, its dice ratios at stride 4 and,
above all, the ``[B, 4096, 4096]`` similarities of the pixel-contrastive instance loss, several
of each for backward. ``recompute_terms`` runs the per-output terms under
``torch.utils.checkpoint`` (non-reentrant): backward keeps only the stacked outputs and runs
the terms again. The terms are cheap element-wise work next to the network, so the step
slows by little.

The instance loss samples pixels from the criterion's own ``torch.Generator``, which the
checkpoint does not know about: the re-run restores that generator to where the first run
started it (the same pixels, the same values) and puts it back afterwards, so the draws of
later steps are those of the plain path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def recompute_terms(
    terms: Callable[[dict[str, Tensor]], dict[str, Tensor]],
    inputs: dict[str, Tensor],
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """``terms(inputs)``, its intermediates recomputed in backward.

    Args:
        terms: computes ``{name: [B'] per-image term}`` from ``inputs``.
        inputs: the stacked outputs ``[B', ...]`` the terms read.
        generator: the RNG ``terms`` draws from (``None``: none).
    """
    start = generator.get_state() if generator is not None else None
    calls = 0

    def run(stacked: dict[str, Tensor]) -> dict[str, Tensor]:
        nonlocal calls
        calls += 1
        if calls == 1 or generator is None:
            return terms(stacked)
        after = generator.get_state()
        generator.set_state(start)
        try:
            return terms(stacked)
        finally:
            generator.set_state(after)

    return checkpoint(run, inputs, use_reentrant=False)
