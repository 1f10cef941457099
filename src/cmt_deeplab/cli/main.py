"""Entry point of the ``cmt-deeplab`` command.

Each subcommand lives in its own module under ``cmt_deeplab.cli`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to the function that
runs it. Adding a command = writing one module and naming it in ``COMMAND_MODULES``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from pathlib import Path

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
    original_format = warnings.formatwarning
    warnings.formatwarning = _short_warning(args.command, original_format)
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cmt-deeplab {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cmt-deeplab {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = original_format
    return int(result or 0)


def _short_warning(command: str, original):  # noqa: ANN001, ANN202 (warnings' signature)
    """The library's warnings (``UserWarning``) as ``cmt-deeplab CMD: warning: ...`` lines,
    without the source line a user cannot act on; other categories as Python prints them."""

    def format_warning(message, category, filename, lineno, line=None):  # noqa: ANN001, ANN202
        if issubclass(category, UserWarning) and filename.startswith(_PACKAGE_DIR):
            return f"cmt-deeplab {command}: warning: {message}\n"
        return original(message, category, filename, lineno, line)

    return format_warning


#: Warnings raised from this folder (the library's own) get the short format.
_PACKAGE_DIR = str(Path(__file__).resolve().parents[1])


if __name__ == "__main__":
    sys.exit(main())
