"""``cmt-deeplab train``: train a model from a YAML config, with overrides.

    cmt-deeplab train --config coco_cmt_deeplab_s --data /data/coco --train-split train2017 \
        --val-split val2017 --out runs/cmt_s
    cmt-deeplab train --config synthetic_cmt_deeplab_tiny --data synth --train-split train \
        --val-split val --out runs/tiny --set optimizer.lr=2e-3
    torchrun --nproc_per_node 8 -m cmt_deeplab.cli.main train --config ... --out ...
    cmt-deeplab train --config synthetic_cmt_deeplab_tiny --data shapes --out runs/ft \
        --init-from runs/tiny --backbone-only      # a pretrained start (net surgery included)

Without ``--config`` the model's own recipe is used (``--model cmt-deeplab-tiny``: the
synthetic CPU preset; a paper model: its paper config; no ``--model``: cmt-deeplab-s's), and
the command says which. Before anything is loaded, settings that cannot fit the machine's
memory are an error and a run that ends inside its warm-up gets a warning
(``engine.preflight``). ``--resume`` continues from the newest complete training state in
``--out``; ``--dry-run`` runs one step at the configured crop and batch and reports the peak
memory.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cmt_deeplab.cli.common import size_argument
from cmt_deeplab.cli.main import UserError
from cmt_deeplab.data.arguments import add_data_arguments, split_from_args
from cmt_deeplab.data.splits import PATH_FIELDS
from cmt_deeplab.utils.io import check_output_dir

#: Flag -> dotted config key; given flags override ``--config`` and ``--set``.
_FLAG_KEYS = {
    "model": "model.name",
    "steps": "run.steps",
    "batch_size": "run.batch_size",
    "crop": "input.crop",
    "lr": "optimizer.lr",
    "seed": "run.seed",
    "save_every": "run.save_every",
    "eval_every": "run.eval_every",
    "device": "run.device",
    "num_workers": "run.num_workers",
    "time_limit": "run.time_limit_s",
    "init_from": "init.checkpoint",
}
def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a CMT-DeepLab / MaX-DeepLab model",
        description="Trains a model. Settings come from --config (a YAML path or a shipped "
                    "config name; default: the recipe of --model, e.g. the synthetic preset "
                    "for cmt-deeplab-tiny, the paper's COCO config for cmt-deeplab-s), then "
                    "--set key.sub=value overrides, then the flags below.",
    )
    parser.add_argument("--config", metavar="FILE|NAME",
                        help="YAML config, or the name of a shipped one (see --list-configs); "
                             "default: the recipe of --model")
    parser.add_argument("--list-configs", action="store_true",
                        help="print the shipped config names and exit")
    parser.add_argument("--model", metavar="NAME", help="registered model name (model.name)")
    add_data_arguments(parser, ("--train-split", "--val-split"))
    parser.add_argument("--steps", type=int, metavar="N", help="optimizer steps (run.steps)")
    parser.add_argument("--batch-size", type=int, metavar="B",
                        help="images per step over all processes (run.batch_size)")
    parser.add_argument("--crop", type=size_argument("--crop"), metavar="HxW",
                        help="training crop, S or HxW (input.crop)")
    parser.add_argument("--lr", type=float, metavar="X", help="base learning rate")
    parser.add_argument("--seed", type=int, metavar="K")
    parser.add_argument("--save-every", type=int, metavar="N",
                        help="steps between training states (0: only the final one)")
    parser.add_argument("--eval-every", type=int, metavar="N",
                        help="steps between PQ evaluations on --val-split (0: off)")
    parser.add_argument("--device", metavar="D", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--num-workers", type=int, metavar="N", help="data loader workers")
    parser.add_argument("--time-limit", type=float, metavar="SECONDS",
                        help="stop (saving a resumable state) after this much training time")
    parser.add_argument("--fit-time-limit", action="store_true",
                        help="with --time-limit: shorten the schedule to end with the time, "
                             "from the measured speed (run.fit_time_limit)")
    parser.add_argument("--out", metavar="DIR", help="output directory (required unless "
                                                     "--dry-run)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest complete training state in --out")
    parser.add_argument("--dry-run", action="store_true",
                        help="run one training step, report peak memory and exit")
    parser.add_argument("--init-from", metavar="DIR|FILE|NAME",
                        help="pretrained start (init.checkpoint): a model directory, a "
                        ".safetensors file, a deeplab2 checkpoint or a published name "
                        "(cmt-deeplab convert deeplab2 --list); 'none' trains from scratch")
    parser.add_argument("--backbone-only", action="store_true",
                        help="take only the pixel encoder of --init-from (init.backbone_only)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="start even when the estimated memory exceeds the machine's")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override any config key, e.g. "
                        "--set optimizer.lr=3e-4 --set loss.mask_approx_weight=0.5")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit")
    parser.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> Any:
    """The resolved ``TrainConfig`` of the command line."""
    return _resolve(args)[0]


def _resolve(args: argparse.Namespace) -> tuple[Any, str]:
    """``(TrainConfig, which config it came from, in words)``."""
    from cmt_deeplab.engine.config import ModelSection, load_train_config, model_recipe

    values: dict[str, Any] = {}
    for attribute, key in _FLAG_KEYS.items():
        value = getattr(args, attribute, None)
        if value is not None:
            values[key] = value
    if args.data is not None:
        values["data.root"] = str(args.data)
    for split in ("train", "val"):
        source, _ = split_from_args(args, f"--{split}-split")
        if source.given:
            # Data given on the command line replaces the config's split entirely.
            for field in ("split", *PATH_FIELDS):
                value = getattr(source, field)
                values[f"data.{split}_{field}"] = str(value) if value is not None else None
    if getattr(args, "skip_bad", False):
        values["data.skip_bad"] = True
    if getattr(args, "fit_time_limit", False):
        values["run.fit_time_limit"] = True
    if getattr(args, "backbone_only", False):
        values["init.backbone_only"] = True
    if str(values.get("init.checkpoint", "")).lower() == "none":
        values["init.checkpoint"] = None
    if args.config is not None:
        return load_train_config(args.config, args.overrides, values), f"config {args.config}"
    model = args.model or ModelSection.name
    name, recipe = model_recipe(model)
    given = "--model " + model if args.model else f"the default model {model}"
    source = (f"config {name} (the recipe of {given}; --config chooses another)" if name
              else f"the built-in defaults (no shipped recipe for {given}; pass --config)")
    return load_train_config(recipe, args.overrides, values), source


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.engine.config import list_shipped_configs

    if args.list_configs:
        print("\n".join(list_shipped_configs()))
        return 0
    config, source = _resolve(args)
    if os.environ.get("RANK", "0") == "0" and not args.print_config:
        print(f"train: {config.model.name} with {source}", file=sys.stderr)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if not args.dry_run and not args.out:
        raise UserError("--out DIR is required (where checkpoints and the model go)")
    if args.out:
        check_output_dir(args.out, "--out")

    from cmt_deeplab.engine.trainer import Trainer
    from cmt_deeplab.utils.process_memory import format_bytes

    trainer = Trainer(config, None if args.dry_run else args.out, resume=args.resume,
                      progress=not args.no_progress, check_memory=not args.no_memory_check)
    try:
        if args.dry_run:
            report = trainer.dry_run()
            print(f"dry run: {report['model']} on {report['device']}, crop "
                  f"{report['crop'][0]}x{report['crop'][1]}, {report['micro_batch']} image(s) "
                  f"per micro-batch x {report['accumulate']}: loss {report['loss']:.4f}, "
                  f"{report['seconds']:.2f}s, {report['memory_kind']} "
                  f"{format_bytes(report['peak_memory_bytes'])}")
            print(json.dumps(report))
            return 0
        summary = trainer.train()
    except FloatingPointError as error:
        print(f"cmt-deeplab train: error: {error}", file=sys.stderr)
        return 1
    pq = f", PQ {summary['pq']:.2f}" if summary["pq"] is not None else ""
    if trainer.dist.is_main:
        print(f"trained {summary['steps']} steps ({summary['seconds_per_step']:.3f}s/step)"
              f"{pq}; model written to {Path(args.out) / 'model.safetensors'}")
    return 0

