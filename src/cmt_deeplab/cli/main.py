"""Entry point of the ``cmt-deeplab`` command.

Each subcommand lives in its own module under ``cmt_deeplab.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that
runs it. Adding a command = writing one module and naming it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "models",
    "cost",
    "synth", "data",
    "predict",
    "train",
    "visualize",
    "evaluate",
    "demo",
    "convert",
    "export",
]


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmt-deeplab",
        description="CMT-DeepLab and MaX-DeepLab panoptic segmentation.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"cmt_deeplab.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cmt-deeplab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmt-deeplab {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
