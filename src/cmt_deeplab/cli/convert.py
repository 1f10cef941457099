"""``cmt-deeplab convert deeplab2``: a deeplab2 (TensorFlow) checkpoint -> a model directory.

    cmt-deeplab convert deeplab2 --checkpoint max_deeplab_s_os16_res641_400k \\
        --model max-deeplab-s --out models/max_s_coco
    cmt-deeplab convert deeplab2 --checkpoint max_deeplab_s_backbone_imagenet1k \\
        --model cmt-deeplab-s --backbone-only --out models/cmt_s_imagenet
    cmt-deeplab convert deeplab2 --checkpoint runs/ckpt-400000 --model max-deeplab-s --out DIR
    cmt-deeplab convert deeplab2 --list

``--checkpoint`` is a checkpoint prefix, the folder holding it, a ``.tar.gz``, or a published
name (``--list``; fetched once into ``$CMT_DEEPLAB_CACHE``, default ``~/.cache/cmt-deeplab``).
The output directory holds ``model.safetensors``, ``config.yaml`` and ``conversion.json``
(every variable and the tensor it went to, unused variables, tensors left new).
"""

from __future__ import annotations

import argparse
from typing import Any

import yaml

from cmt_deeplab.cli.main import UserError
from cmt_deeplab.utils.io import check_output_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert a checkpoint of another framework (deeplab2) into a model directory",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("framework", choices=["deeplab2"], help="where the checkpoint comes from")
    parser.add_argument("--checkpoint", metavar="PATH|NAME",
                        help="prefix, folder, .tar.gz, or a published name (see --list)")
    parser.add_argument("--model", help="the model to convert into, e.g. max-deeplab-s")
    parser.add_argument("--out", metavar="DIR", help="model directory to write")
    parser.add_argument("--num-classes", type=int, help="default: the checkpoint's (COCO 133)")
    parser.add_argument("--num-thing-classes", type=int, help="needed when not COCO's 133")
    parser.add_argument("--categories", metavar="JSON", help="COCO-style categories naming the classes")
    parser.add_argument("--backbone-only", action="store_true",
                        help="take the encoder only; everything else stays newly initialised")
    parser.add_argument("--crop", type=int, help="training crop recorded in config.yaml "
                        "(default: the published checkpoint's, else 641)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="build_model override (YAML value), e.g. width_multiplier=0.5")
    parser.add_argument("--no-strict", action="store_true",
                        help="keep the model's own value where a variable is missing or has "
                             "another shape, and list it, instead of failing")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--url", help="download a published name from this URL instead")
    parser.add_argument("--list", action="store_true", help="list the published checkpoints")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.convert.archives import ARCHIVES

    if args.list:
        width = max(len(name) for name in ARCHIVES)
        for name, archive in ARCHIVES.items():
            kind = "backbone" if archive.backbone_only else "model"
            print(f"{name.ljust(width)}  {kind:8}  {archive.model:16}  {archive.note}")
        return 0
    missing = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--model", args.model),
                                        ("--out", args.out)) if not value]
    if missing:
        raise UserError(f"{', '.join(missing)} required")
    check_output_dir(args.out, "--out")
    from cmt_deeplab.convert.deeplab2 import CONVERSION_FILE, convert_deeplab2

    _, report = convert_deeplab2(
        args.checkpoint, args.model, args.out, num_classes=args.num_classes,
        num_thing_classes=args.num_thing_classes, backbone_only=args.backbone_only,
        categories=args.categories, crop=args.crop, overrides=_overrides(args.set),
        strict=not args.no_strict, overwrite=args.overwrite, url=args.url,
    )
    print(f"converted {report.checkpoint} into {args.model}"
          + (" (backbone only)" if args.backbone_only else ""))
    print(report.summary())
    print(f"wrote {args.out} (model.safetensors, config.yaml, {CONVERSION_FILE})")
    return 0


def _overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as error:
            raise UserError(f"--set {item!r}: bad value ({error})") from None
    return overrides
