"""Entry point of the ``cmt-deeplab`` command.

Errors: a bad input (``UserError``, a missing file, a bad value, an OS error naming a path)
prints one line ``cmt-deeplab CMD: error: ...`` and exits with status 2; anything else that
escapes prints one line naming the command and the error with a hint to rerun with
``--debug``, and exits with status 1. ``--debug`` (anywhere on the command line) lets every
error raise, with its traceback.

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
    _add_debug_flag(parser, top_level=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = " ".join(part for part in (args.command, getattr(args, "action", None)) if part)
    if getattr(args, "debug", False):
        return int(args.func(args) or 0)
    original_format = warnings.formatwarning
    warnings.formatwarning = _short_warning(command, original_format)
    try:
        result = args.func(args)
    except (UserError, FileNotFoundError, ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"cmt-deeplab {command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as error:
        # The OS's own errors name the path (exists as a file, not a directory, denied).
        print(f"cmt-deeplab {command}: error: {error}", file=sys.stderr)
        return 2
    except MemoryError as error:
        print(f"cmt-deeplab {command}: error: out of memory {error}".rstrip(), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cmt-deeplab {command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - a bug: one line, the traceback on request
        text = str(error).splitlines()[0] if str(error) else ""
        print(f"cmt-deeplab {command}: internal error: {type(error).__name__}: {text} "
              f"(rerun with --debug for the traceback)", file=sys.stderr)
        return 1
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


def _add_debug_flag(parser: argparse.ArgumentParser, top_level: bool = False) -> None:
    """``--debug`` on the command and every subcommand, so it may go anywhere."""
    # Subcommands default to SUPPRESS so that they never reset a flag given before them.
    parser.add_argument("--debug", action="store_true",
                        default=False if top_level else argparse.SUPPRESS,
                        help="show the traceback of an error")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in set(action.choices.values()):
                _add_debug_flag(subparser)


if __name__ == "__main__":
    # ``python -m cmt_deeplab.cli.main`` (torchrun) runs this file as ``__main__``: call the
    # imported module's main, so that the commands' UserError is the one caught there.
    from cmt_deeplab.cli.main import main as package_main

    sys.exit(package_main())
