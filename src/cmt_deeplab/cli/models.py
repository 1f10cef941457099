"""``cmt-deeplab models``: the model zoo as a table."""

from __future__ import annotations

import argparse
import json

from cmt_deeplab.cost import count_model_parameters
from cmt_deeplab.models import list_models, model_entry


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list the registered models")
    parser.add_argument("pattern", nargs="?", default=None, help="shell pattern, e.g. 'cmt-*'")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cmt_deeplab.cli.main import UserError

    names = list_models(args.pattern)
    if not names:
        raise UserError(f"no registered model matches {args.pattern!r}; "
                        f"registered: {', '.join(list_models())}")
    rows = []
    for name in names:
        entry = model_entry(name)
        total, paper = count_model_parameters(name)
        rows.append({"name": name, "params": paper, "params_total": total,
                     "paper": entry.paper_params, "backbone": entry.backbone, "notes": entry.notes})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ("name", "params", "+aux semantic", "paper", "backbone", "notes")
    table = [header] + [
        (r["name"], f"{r['params']:,}", f"{r['params_total']:,}", r["paper"], r["backbone"], r["notes"])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    print("\nparams: trainable, auxiliary semantic branch excluded (as deeplab2 and the paper count);"
          " COCO heads (133 classes), 128 slots.")
    return 0
