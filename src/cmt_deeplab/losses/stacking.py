"""Deep supervision in fewer passes: the per-image terms of several outputs, stacked.

Every per-output term (class, dice, mask-ID, instance) is computed per image, and every output
(the final one and each auxiliary one) is scored against the same targets with the same
permutation. So outputs of equal shapes can be concatenated along the batch (``[L x B, ...]``)
and each term run once for all of them: the same values as one output at a time, with a
quarter of the kernel launches and autograd nodes for a four-layer decoder (the tiny CPU step
is bound by those). An optimisation only: ``PanopticCriterion`` would compute the same terms
one output at a time.

Stacking copies the outputs, so at most ``STACK_BYTES`` of them go together: at COCO crops
(~70 MB of masks and features per image and output) each output is still computed alone,
where launches do not matter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

#: At most this many bytes of outputs are stacked into one pass of the per-output terms.
STACK_BYTES = 64 << 20


def stacked_terms(
    outputs: Sequence[Mapping[str, Tensor]],
    keys: Sequence[str],
    batch_terms: Callable[[dict[str, Tensor], int], dict[str, Tensor]],
) -> list[dict[str, Tensor]]:
    """Per-output terms, each the mean over its images, computed on stacked outputs.

    Args:
        outputs: the model outputs (final, then auxiliary), each with ``keys``
            (``[B, ...]`` tensors).
        keys: the tensors the terms read (``pred_logits``, ``pred_masks``, ...).
        batch_terms: ``(stacked outputs [count x B, ...], count) -> {name: [count x B]}``
            per-image terms; ``count`` says how many times to repeat the per-image targets.

    Returns:
        One ``{name: scalar}`` dict per output, in the order of ``outputs``.
    """
    groups: dict[tuple, list[int]] = {}
    for index, output in enumerate(outputs):
        groups.setdefault(tuple(tuple(output[key].shape) for key in keys), []).append(index)
    chunks = []
    for members in groups.values():
        size = sum(outputs[members[0]][key].nbytes for key in keys)
        per_chunk = max(1, STACK_BYTES // size)
        chunks += [members[i:i + per_chunk] for i in range(0, len(members), per_chunk)]
    terms: list[dict[str, Tensor]] = [{} for _ in outputs]
    for members in chunks:
        count = len(members)
        stacked = {key: torch.cat([outputs[i][key] for i in members]) for key in keys}
        for name, value in batch_terms(stacked, count).items():
            for i, per_output in zip(members, value.view(count, -1).mean(1), strict=True):
                terms[i][name] = per_output
    return terms
