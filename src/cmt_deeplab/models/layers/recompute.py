"""Activation recompute: keep only each block's input for backward and run the block again there.

``set_recompute(model, mode)`` picks what ``BlockGroup`` recomputes:

- ``"none"``: nothing; every intermediate activation is kept for backward;
- ``"axial"``: the axial-attention residual blocks, whose attention logits and softmax
  ``[B, h, H, W, W]`` are the largest saved tensors (deeplab2 recomputes them by default,
  ``axial_use_recompute_grad``);
- ``"blocks"``: every residual block and every transformer layer (MaX dual-path, CMT), the
  stem and the semantic head (at stride 2 and 4 they kept ~40% of what a blocks-recomputed
  CMT-S still saved); the trainer then recomputes the loss terms too (``losses.recompute``).

It uses ``torch.utils.checkpoint`` in its non-reentrant form, which keeps the autograd graph of
the first forward (so outputs stored on the side, such as a CMT layer's auxiliary predictions,
get gradients) and drops the tensors that graph would save; backward re-runs the module to get
them back. Three things make the recomputed pass the same as the first one:

- the RNG: the CPU and device RNG states are restored before the re-run (drop path and dropout
  draw the same masks) and the global state afterwards is the one the first forward left;
- BatchNorm: the re-run would update the running statistics a second time (momentum applied
  twice, ``num_batches_tracked`` counted twice); the module's buffers are copied before the
  re-run and written back after it;
- the transformer state: a layer reads ``state.prev_mask_logits`` and appends to the state's
  lists. The re-run gets the values of the first call and a scratch state, so it neither reads
  later layers' values nor appends twice.

Recompute applies in training with gradients on; evaluation and ``no_grad`` run the plain path.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

if TYPE_CHECKING:
    from cmt_deeplab.models.layers.block_group import TransformerState

RECOMPUTE_MODES = ("none", "axial", "blocks")


def check_recompute_mode(mode: str, where: str = "recompute") -> str:
    if mode not in RECOMPUTE_MODES:
        raise ValueError(f"{where} must be one of {', '.join(RECOMPUTE_MODES)}, got {mode!r}")
    return mode


def set_recompute(model: nn.Module, mode: str) -> nn.Module:
    """Sets the recompute mode of every ``BlockGroup`` in ``model``; returns ``model``.

    The mode is not part of the weights or of ``build_kwargs``: a model trained with recompute
    is the same model, and its checkpoints load without it.
    """
    check_recompute_mode(mode)
    for module in model.modules():
        if isinstance(getattr(module, "recompute", None), str):
            module.recompute = mode  # BlockGroup, the encoder (its stem), the semantic head
    return model


def run_module(module: nn.Module, function: Any, *args: Any, mode: str) -> Any:
    """``function(*args)``, a part of ``module`` (or its whole forward), recomputed in
    backward when ``mode == "blocks"``; ``module``'s buffers are restored after the re-run."""
    if mode != "blocks" or not _records_graph(module):
        return function(*args)
    return _checkpoint(module, function, *args)


def run_block(block: nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    """``block(x)``, recomputed in backward when ``mode`` covers it."""
    covered = mode == "blocks" or (mode == "axial" and getattr(block, "block_type", "") == "axial")
    if not (covered and _records_graph(block)):
        return block(x)
    return _checkpoint(block, block, x)


def run_transformer(
    layer: nn.Module,
    pixels: torch.Tensor,
    memory: torch.Tensor,
    state: TransformerState | None,
    mode: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer(pixels, memory, state)``, recomputed in backward when ``mode == "blocks"``.

    The layer runs on a copy of ``state`` taken now; what it records there is moved into
    ``state`` after the first call only.
    """
    if mode != "blocks" or state is None or not _records_graph(layer):
        return layer(pixels, memory, state)
    snapshot = _copy_state(state)
    recorded = []

    def forward(pixels: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        local = _copy_state(snapshot)
        if not recorded:  # the first call; the re-run in backward records into a scratch copy
            recorded.append(local)
        return layer(pixels, memory, local)

    pixels, memory = _checkpoint(layer, forward, pixels, memory)
    _merge_state(state, recorded[0])
    return pixels, memory


def _records_graph(module: nn.Module) -> bool:
    return module.training and torch.is_grad_enabled()


def _checkpoint(module: nn.Module, function: Any, *args: torch.Tensor) -> Any:
    return checkpoint(
        function, *args, use_reentrant=False, preserve_rng_state=True,
        context_fn=lambda: (contextlib.nullcontext(), _buffers_restored(module)),
    )


@contextlib.contextmanager
def _buffers_restored(module: nn.Module) -> Iterator[None]:
    """Writes the module's buffers (BN running statistics, ``num_batches_tracked``) back to
    their values on entry: the re-run in backward must not count as a second training batch."""
    saved = [(buffer, buffer.detach().clone()) for buffer in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _copy_state(state: TransformerState) -> TransformerState:
    """A state with the same values and fresh lists (what the layer appends goes there)."""
    extras = {key: list(value) if isinstance(value, list) else value
              for key, value in state.extras.items()}
    return type(state)(prev_mask_logits=state.prev_mask_logits,
                       aux_outputs=list(state.aux_outputs), maps=list(state.maps),
                       return_maps=state.return_maps, extras=extras)


def _merge_state(state: TransformerState, local: TransformerState) -> None:
    state.prev_mask_logits = local.prev_mask_logits
    state.aux_outputs[:] = local.aux_outputs
    state.maps[:] = local.maps
    state.extras.clear()
    state.extras.update(local.extras)
