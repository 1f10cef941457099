"""Numerical parity with deeplab2: convert the reference checkpoints that
``deeplab2_reference.py`` wrote (deeplab2's own MaX-DeepLab, TensorFlow) and compare our
outputs with deeplab2's on the same inputs.

    python benchmarks/deeplab2_parity.py --refs REFS [--variants small,small_l,backbones,max_s,max_l]

``REFS`` is the ``--out`` folder of ``deeplab2_reference.py`` (which says how to set up its
TensorFlow environment); this script needs no TensorFlow. Per variant and input it reports,
for our eager model (``eager``) and the inference copy ``predict`` runs (BN folded,
channels-last; ``inference``):

- per raw output (class logits, mask logits, pixel features, semantic logits): the largest
  absolute difference and that divided by the output's largest magnitude (goal <= 1e-3);
  deeplab2's semantic head has 134 channels with COCO's void at 0, which the conversion drops;
- the share of stride-4 pixels whose winning slot (argmax of the mask logits) is the same;
- the share of pixels with the same panoptic label after post-processing with every threshold
  and area limit at 0 (deeplab2's ``post_permissive_*``; random weights leave every pixel void
  under the real thresholds), labels encoded as deeplab2 does (class + 1, slot + 1);
- for scale, the harness's own sensitivity (relative output change of deeplab2's model for an
  input change of ~1e-6) and, with ``--self-sensitivity``, ours for the same input change: a
  floor below which differences are float rounding amplified by the network.

Where the harness saved them, deeplab2's encoder endpoints are compared too, and
``backbones`` converts each ImageNet encoder (MaX-S backbone in deeplab2's and TF Model
Garden's layouts, MaX-L backbone, ResNet-50) ``--backbone-only`` and compares the stage outputs.
Results go to ``--out`` (JSON) and markdown tables on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import report_load  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.convert import TFCheckpoint, convert_state_dict  # noqa: E402
from cmt_deeplab.data.metadata import Category, DatasetInfo  # noqa: E402
from cmt_deeplab.inference.fast import optimize_for_inference  # noqa: E402
from cmt_deeplab.inference.post_processing import pixelwise_panoptic  # noqa: E402
from cmt_deeplab.models.layers.block_group import TransformerState  # noqa: E402

OUTPUTS = {  # deeplab2 key -> ours
    "transformer_class_logits": "pred_logits",
    "pixel_space_mask_logits": "pred_masks",
    "pixel_space_normalized_feature": "pixel_feature",
    "semantic_logits": "semantic_logits",
}


def run_model(model: torch.nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    """Our outputs for one ``[1, H, W, 3]`` image in [0, 255], NHWC like deeplab2's.

    The auxiliary semantic branch runs in training mode only; the root module's flag alone is
    set so that every layer stays in eval mode (BN running statistics, no dropout/drop path).
    """
    images = cmt_deeplab.normalize_images(torch.from_numpy(image).permute(0, 3, 1, 2))
    model.training = True
    try:
        with torch.inference_mode():
            out = model(images)
    finally:
        model.training = False
    result = {}
    for theirs, ours in OUTPUTS.items():
        value = out[ours]
        result[theirs] = (value.permute(0, 2, 3, 1) if value.ndim == 4 else value).float().numpy()
    return result


def encoder_endpoints(model: torch.nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    """Our encoder's ``stage1`` .. ``stage5`` (non-activated, as deeplab2's), NHWC."""
    images = cmt_deeplab.normalize_images(torch.from_numpy(image).permute(0, 3, 1, 2))
    with torch.inference_mode():
        memory = model.memory(1) if hasattr(model, "memory") else None  # MaX: the slot table
        endpoints, _ = model.backbone(images, memory, TransformerState())
    return {k: v.permute(0, 2, 3, 1).float().numpy() for k, v in endpoints.items()}


def contiguous_info(num_classes: int, num_things: int) -> DatasetInfo:
    """Categories with id = class + 1: our panoptic labels are then deeplab2's."""
    return DatasetInfo([Category(i + 1, f"c{i + 1}", i < num_things) for i in range(num_classes)],
                       label_divisor=256)


def compare(ours: dict[str, np.ndarray], raw: dict[str, np.ndarray], post: dict[str, np.ndarray],
            info: DatasetInfo, size: tuple[int, int]) -> dict:
    metrics: dict = {}
    for key in OUTPUTS:
        reference = raw[key]
        if key == "semantic_logits" and reference.shape[-1] == ours[key].shape[-1] + 1:
            reference = reference[..., 1:]  # void channel
        diff = float(np.abs(ours[key] - reference).max())
        scale = float(np.abs(reference).max())
        metrics[key] = {"max_abs": diff, "max_ref": scale, "rel": diff / scale}
    their_slot = raw["pixel_space_mask_logits"].argmax(-1)
    our_slot = ours["pixel_space_mask_logits"].argmax(-1)
    metrics["same_winning_slot"] = float((their_slot == our_slot).mean())
    result = pixelwise_panoptic(
        torch.from_numpy(ours["transformer_class_logits"][0]),
        torch.from_numpy(ours["pixel_space_mask_logits"][0]).permute(2, 0, 1),
        info, size, class_threshold=0.0, pixel_threshold=0.0, thing_area_limit=0,
        stuff_area_limit=0, input_size=size,
    )
    metrics["same_panoptic_label"] = float((result.panoptic == post["panoptic_pred"][0]).mean())
    metrics["panoptic_segments"] = int(np.unique(post["panoptic_pred"][0]).size)
    return metrics


def self_sensitivity(model: torch.nn.Module, image: np.ndarray, ours: dict) -> dict[str, float]:
    """Our relative output change for the harness's input change: N(0, 1e-4) on [0, 255]."""
    noise = np.random.default_rng(99).normal(0.0, 1e-4, image.shape)
    perturbed = run_model(model, (image + noise.astype(np.float32)).astype(np.float32))
    return {k: float(np.abs(ours[k] - perturbed[k]).max() / np.abs(ours[k]).max())
            for k in OUTPUTS}


def run_variant(root: Path, threads: int, inference_copy: bool, sensitivity_check: bool) -> dict:
    meta = json.loads((root / "meta.json").read_text())
    name = meta.get("port_model", "max-deeplab-s")
    start = time.perf_counter()
    checkpoint = TFCheckpoint(root / meta["checkpoint_prefix"])
    model = cmt_deeplab.build_model(name, **meta["port_config"])
    state, report = convert_state_dict(checkpoint, model, checkpoint_name=str(checkpoint.prefix))
    model.load_state_dict(state)
    model.eval()
    del state
    convert_s = time.perf_counter() - start
    paths = {"eager": model}
    if inference_copy:
        paths["inference"] = optimize_for_inference(model)
    info = contiguous_info(meta["port_config"].get("num_classes", 133), 80)
    inputs = np.load(root / "inputs.npz")
    rows = {}
    for tag in inputs.files:
        raw = dict(np.load(root / f"raw_{tag}.npz"))
        post = dict(np.load(root / f"post_permissive_{tag}.npz"))
        size = tuple(inputs[tag].shape[1:3])
        sensitivity = meta["inputs"][tag].get("sensitivity_max_rel_change_for_input_noise_1e_4", {})
        for path, net in paths.items():
            begin = time.perf_counter()
            ours = run_model(net, inputs[tag])
            seconds = time.perf_counter() - begin
            metrics = compare(ours, raw, post, info, size)
            metrics["forward_s"] = seconds
            metrics["deeplab2_sensitivity"] = sensitivity
            if sensitivity_check and path == "eager":
                metrics["our_sensitivity"] = self_sensitivity(net, inputs[tag], ours)
            endpoints_file = root / f"endpoints_{tag}.npz"
            if path == "eager" and endpoints_file.is_file():
                theirs = np.load(endpoints_file)
                mine = encoder_endpoints(net, inputs[tag])
                metrics["endpoints_rel"] = {
                    k: float(np.abs(mine[k] - theirs[k]).max() / np.abs(theirs[k]).max())
                    for k in mine if k in theirs.files}
            rows[f"{tag}/{path}"] = metrics
            print(f"  {root.name} {tag} {path}: " + ", ".join(  # relative differences
                f"{k} {metrics[k]['rel']:.1e}" for k in OUTPUTS)
                + f", slot {metrics['same_winning_slot']:.4%}, panoptic "
                f"{metrics['same_panoptic_label']:.4%} ({seconds:.1f} s)", flush=True)
    return {"model": name, "port_config": meta["port_config"], "params": meta.get(
        "num_params_all"), "converted": len(report.loaded), "unused": report.unused,
            "new": len(report.new), "convert_s": convert_s, "threads": threads, "inputs": rows}


def run_backbones(root: Path) -> dict:
    """Each ImageNet encoder checkpoint (``backbones/<instance>``) converted ``--backbone-only``:
    our encoder's stage outputs against deeplab2's. MaX models are built without their
    transformer layers here (an ImageNet backbone has none; with them, new random layers would
    change stages 4-5)."""
    results = {}
    for folder in sorted(p for p in root.iterdir() if (p / "meta.json").is_file()):
        meta = json.loads((folder / "meta.json").read_text())
        image = np.load(folder / "inputs.npz")
        image = image[image.files[0]]
        reference = np.load(folder / "endpoints.npz")
        overrides = dict(meta["port_config"])
        if meta["port_model"].startswith("max-"):
            overrides["backbone_transformer_beyond_stride"] = 0
        for layout, prefix in meta["checkpoints"].items():
            model = cmt_deeplab.build_model(meta["port_model"], **overrides)
            state, report = convert_state_dict(TFCheckpoint(folder / prefix), model,
                                               backbone_only=True)
            model.load_state_dict(state)
            mine = encoder_endpoints(model.eval(), image)
            rel = {k: float(np.abs(mine[k] - reference[k]).max() / np.abs(reference[k]).max())
                   for k in mine if k in reference.files}
            results[f"{folder.name}/{layout}"] = {
                "model": meta["port_model"], "loaded": len(report.loaded),
                "unused": report.unused, "endpoints_rel": rel}
            print(f"  {folder.name} ({layout}) -> {meta['port_model']}: {len(report.loaded)} "
                  f"tensors, stage rel. diff " + " ".join(f"{v:.1e}" for v in rel.values()))
    return results


def markdown(results: dict) -> str:
    lines = ["| variant | input | path | class logits | mask logits | pixel features | "
             "semantic logits | same winning slot | same panoptic label |",
             "|---|---|---|---|---|---|---|---|---|"]
    for variant, result in results.items():
        for key, m in result.get("inputs", {}).items():
            tag, path = key.split("/")
            cells = [f"{m[k]['max_abs']:.1e} / {m[k]['rel']:.1e}" for k in OUTPUTS]
            lines.append(f"| {variant} | {tag[2:]} | {path} | " + " | ".join(cells)
                         + f" | {m['same_winning_slot']:.3%} | {m['same_panoptic_label']:.3%} |")
    floors = ["", "relative output change for an input change of N(0, 1e-4) on [0, 255] "
              "(deeplab2 / ours)", "",
              "| variant | input | " + " | ".join(OUTPUTS) + " |", "|---|---|" + "---|" * 4]
    rows = 0
    for variant, result in results.items():
        for key, m in result.get("inputs", {}).items():
            if "our_sensitivity" not in m:
                continue
            cells = [f"{m['deeplab2_sensitivity'].get(k, float('nan')):.1e} / "
                     f"{m['our_sensitivity'][k]:.1e}" for k in OUTPUTS]
            floors.append(f"| {variant} | {key.split('/')[0][2:]} | " + " | ".join(cells) + " |")
            rows += 1
    stages = ["", "encoder endpoints (non-activated stage outputs), max abs difference relative "
              "to the largest magnitude", "",
              "| variant | input | stage1 | stage2 | stage3 | stage4 | stage5 |",
              "|---|---|---|---|---|---|---|"]
    for variant, result in results.items():
        for key, m in (result.get("inputs") or result).items():
            if "endpoints_rel" in m:
                label = key.split("/")[0][2:] if "inputs" in result else key.replace("/", " ")
                stages.append(f"| {variant} | {label} | " + " | ".join(
                    f"{m['endpoints_rel'].get(f'stage{i}', float('nan')):.1e}" for i in range(1, 6))
                    + " |")
    return "\n".join(lines + (floors if rows else []) + (stages if len(stages) > 5 else []))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--refs", type=Path, required=True, help="deeplab2_reference.py --out")
    parser.add_argument("--variants", default="small,small_l,backbones,max_s,max_l")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-inference-copy", action="store_true",
                        help="compare the eager model only")
    parser.add_argument("--self-sensitivity", action="store_true",
                        help="also measure our outputs' change for the harness's input noise")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "deeplab2_parity.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(report_load())
    results = {}
    for variant in args.variants.split(","):
        root = args.refs / variant
        if variant == "backbones" and root.is_dir():
            results[variant] = run_backbones(root)
            continue
        if not (root / "meta.json").is_file():
            print(f"skipping {variant}: no {root / 'meta.json'}")
            continue
        results[variant] = run_variant(root, args.threads, not args.no_inference_copy,
                                       args.self_sensitivity)
    print(report_load())
    print("\nmax abs difference / relative to the output's largest magnitude\n")
    print(markdown(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"torch": torch.__version__, "results": results}, indent=1))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
