"""Panoptic prediction on raw images: load, resize, pad, run the model, post-process, undo.

    predictor = Predictor.from_checkpoint("runs/coco/final")
    result = predictor("photo.jpg")                     # PanopticResult at the photo's size
    results = predictor([array, pil_image, "b.png"])    # any mix, any sizes

Each image is resized so that it fits the canvas (longer side = ``size`` for a square canvas,
aspect kept, bilinear with half-pixel centres as ``cmt_deeplab.data.transforms``), normalised
to ``[-1, 1]`` and padded with zeros (mean grey) at the bottom/right to the fixed canvas, so
images of any sizes share a batch. Post-processing crops the padding away and resizes back
to the original size. Every step is per image, so a batch gives the same maps as one image
at a time.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from cmt_deeplab.data.image_io import load_image
from cmt_deeplab.data.metadata import DatasetInfo
from cmt_deeplab.data.transforms import resize_crop_pad
from cmt_deeplab.inference.fast import optimize_for_inference
from cmt_deeplab.inference.post_processing import POST_PROCESSORS
from cmt_deeplab.inference.result import PanopticResult
from cmt_deeplab.model_dir import checkpoint_size, dataset_info, load_model_dir
from cmt_deeplab.utils.size import parse_size

ImageInput = str | Path | np.ndarray | Image.Image

#: ``precision`` -> autocast dtype (``None``: float32, no autocast).
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: Arguments of the post-processors that the Predictor sets itself, per image.
_GEOMETRY_ARGUMENTS = {"pred_logits", "pred_masks", "info", "out_size", "valid_size", "input_size"}


class Predictor:
    """Runs a panoptic model on images and returns ``PanopticResult``s at their original size.

    Args:
        model: a model following the output contract (``pred_logits [B, N, K+1]``,
            ``pred_masks [B, N, ceil(H/4), ceil(W/4)]``).
        info: the categories the model predicts (contiguous order, things first).
        size: canvas ``S`` (``S x S``; the longer image side becomes ``S``) or ``(H, W)`` (the
            image is scaled to fit inside). ``32k + 1`` keeps the strides corner-aligned.
        device: where the model runs; default CUDA when available, else CPU.
        method: ``"pixelwise"`` (MaX, the default for CMT) or ``"maskwise"`` (kMaX).
        batch_size: images per forward pass when called on a list.
        optimize: run an inference copy of ``model`` with its BNs folded into the layers before
            them and channels-last memory (``inference.fast.optimize_for_inference``; outputs
            equal within float rounding). ``False`` runs ``model`` itself, e.g. to hook it.
        inplace: with ``optimize``, rewrite ``model`` itself instead of a copy (it is then fit
            for inference only); saves the copy when the caller owns the model.
        precision: ``"fp32"``, or autocast to ``"bf16"`` (CUDA, or a CPU with bf16 support)
            or ``"fp16"`` (CUDA only). With ``optimize``, the inference copy's (BN-folded) conv
            and linear weights are cast to that dtype once, from the float32 model; norms, the
            ops autocast keeps in float32 and the modules that compute in float32 under
            autocast (``models.layers.float32``: the CMT layers' reference-mask heads) stay
            float32. Outputs are returned in float32.
        compile: ``torch.compile`` the model (fixed canvas, so static shapes). Compiling
            happens at the first batch; if it fails there (no C++ compiler, an unsupported
            op), a warning says why and the Predictor runs eagerly.
        **thresholds: keyword arguments of the post-processor, e.g. ``class_threshold=0.7``,
            ``thing_area_limit=0`` (see ``pixelwise_panoptic`` / ``maskwise_panoptic``).
    """

    def __init__(
        self,
        model: nn.Module,
        info: DatasetInfo,
        size: int | tuple[int, int] = 641,
        device: str | torch.device | None = None,
        method: str = "pixelwise",
        batch_size: int = 4,
        optimize: bool = True,
        inplace: bool = False,
        precision: str = "fp32",
        compile: bool = False,
        **thresholds: Any,
    ) -> None:
        if method not in POST_PROCESSORS:
            raise ValueError(f"unknown post-processing method {method!r}; "
                             f"choose from {sorted(POST_PROCESSORS)}")
        allowed = set(inspect.signature(POST_PROCESSORS[method]).parameters) - _GEOMETRY_ARGUMENTS
        unknown = sorted(set(thresholds) - allowed)
        if unknown:
            raise ValueError(f"unknown {method} post-processing arguments {unknown}; "
                             f"allowed: {sorted(allowed)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose from {sorted(PRECISIONS)}")
        self.device = torch.device(device) if device is not None else _default_device()
        if precision == "fp16" and self.device.type != "cuda":
            raise ValueError(f"precision 'fp16' needs a CUDA device (got {self.device}); use "
                             "'bf16' or 'fp32'")
        self.model = model.to(self.device).eval()
        self.amp_dtype = PRECISIONS[precision]
        if optimize:
            # The inference copy keeps its conv / linear weights in the autocast dtype: autocast
            # would otherwise cast the float32 ones again at every call.
            self.model = optimize_for_inference(self.model, inplace=inplace,
                                                weight_dtype=self.amp_dtype)
        self.channels_last = optimize
        self._forward: Any = torch.compile(self.model, dynamic=False) if compile else self.model
        self._compile_pending = compile
        self.info = info
        self.canvas = parse_size(size, "size")
        self.method = method
        self.batch_size = batch_size
        self.thresholds = thresholds

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        size: int | tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Predictor:
        """A Predictor for a checkpoint directory (``model.safetensors`` + ``config.yaml``).

        ``size`` defaults to the checkpoint's evaluation canvas (``input.eval_size``, else its
        training ``input.crop``), else 641. Other keyword arguments go to the constructor.
        """
        device = torch.device(device) if device is not None else _default_device()
        model, config = load_model_dir(path, device)
        info = dataset_info(config)
        if size is None:
            size = checkpoint_size(config)
        kwargs.setdefault("inplace", True)  # the model is ours: no copy needed
        return cls(model, info, size=size, device=device, **kwargs)

    def __call__(
        self, images: ImageInput | Sequence[ImageInput]
    ) -> PanopticResult | list[PanopticResult]:
        """One image -> one ``PanopticResult``; a list (or tuple) -> a list, in order."""
        if isinstance(images, (list, tuple)):
            results: list[PanopticResult] = []
            for start in range(0, len(images), self.batch_size):
                batch = [to_rgb_array(image) for image in images[start:start + self.batch_size]]
                results.extend(self.predict_arrays(batch))
            return results
        return self.predict_arrays([to_rgb_array(images)])[0]

    @torch.inference_mode()
    def predict_arrays(self, images: Sequence[np.ndarray]) -> list[PanopticResult]:
        """Predicts one batch of ``[H, W, 3]`` uint8 RGB arrays (sizes may differ)."""
        if not images:
            return []
        inputs, valid_sizes = zip(*(self.preprocess(image) for image in images), strict=True)
        batch = torch.stack(inputs)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        outputs = self._run(batch)
        for key in ("pred_logits", "pred_masks"):
            if key not in outputs:
                raise ValueError(f"model output has no {key!r} (keys: {sorted(outputs)})")
        post_process = POST_PROCESSORS[self.method]
        return [
            post_process(
                outputs["pred_logits"][index],
                outputs["pred_masks"][index],
                self.info,
                out_size=image.shape[:2],
                valid_size=valid_size,
                input_size=self.canvas,
                **self.thresholds,
            )
            for index, (image, valid_size) in enumerate(zip(images, valid_sizes, strict=True))
        ]

    def _run(self, batch: torch.Tensor) -> dict[str, Any]:
        """The forward pass, in ``precision``; the compiled model falls back to eager once."""
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            if self._compile_pending:
                self._compile_pending = False
                try:
                    outputs = self._forward(batch)
                except Exception as error:  # noqa: BLE001 - any compile failure: run eagerly
                    warnings.warn(f"torch.compile failed ({type(error).__name__}: "
                                  f"{str(error).strip().splitlines()[0] if str(error) else ''}); "
                                  "running the model eagerly", stacklevel=3)
                    self._forward = self.model
                    outputs = self._forward(batch)
            else:
                outputs = self._forward(batch)
        if self.amp_dtype is not None:
            outputs = {key: value.float() if torch.is_tensor(value) and value.is_floating_point()
                       else value for key, value in outputs.items()}
        return outputs

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int]]:
        """``[H0, W0, 3]`` uint8 -> (normalised, padded input ``[3, H, W]``, resized ``(Hv, Wv)``)."""
        height, width = image.shape[:2]
        scale = min(self.canvas[0] / height, self.canvas[1] / width)
        valid = (
            min(self.canvas[0], max(1, round(height * scale))),
            min(self.canvas[1], max(1, round(width * scale))),
        )
        # Move the uint8 pixels first: 4x less to copy than float, and the resize runs there.
        pixels = torch.tensor(np.ascontiguousarray(image), device=self.device)
        normalised = pixels.permute(2, 0, 1).float() / 127.5 - 1.0
        # Padding is added after normalising, so it is 0: mean grey, as in training.
        padded = resize_crop_pad({"image": normalised}, valid, self.canvas)["image"]
        return padded, valid


def to_rgb_array(image: ImageInput) -> np.ndarray:
    """A path, PIL image or array -> ``[H, W, 3]`` uint8 RGB (see ``data.image_io`` for files).

    Arrays may be ``[H, W]`` (gray), ``[H, W, 3]`` or ``[H, W, 4]`` (alpha dropped); non-uint8
    arrays are taken as values in ``[0, 255]``.
    """
    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected an image path, PIL image or numpy array, got "
                         f"{type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None].repeat(3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or min(image.shape[:2]) < 1:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {image.shape}")
    image = image[..., :3]
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64)), 0, 255).astype(np.uint8)
    return image


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
