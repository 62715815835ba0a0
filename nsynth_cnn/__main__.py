"""Command line of the product: ``python -m nsynth_cnn {train,evaluate,predict,prepare} ...``.

Each sub-command lives in its own module, which adds its parser with ``add_parser(subparsers)``. The developer
tools (corpus rendering, benchmark, web page) have their own entry point, ``python -m nsynth_cnn.tools``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("nsynth_cnn.train", "nsynth_cnn.evaluate", "nsynth_cnn.predict", "nsynth_cnn.prepare")
# plain text: --help prints it as it is
DESCRIPTION = ("The product's commands: train the two networks, evaluate them on NSynth data, predict the family "
               "of any recording, prepare NSynth's train file for training. The developer tools (corpus "
               "rendering, benchmark, web page) have their own: python -m nsynth_cnn.tools --help.")


def build_parser(prog: str, description: str, modules) -> argparse.ArgumentParser:
    """The parser of ``prog``: one sub-command per module of ``modules``, each added by its ``add_parser``.
    ``description`` is plain text (``--help`` prints it as it is)."""
    ap = argparse.ArgumentParser(prog=prog, description=description)
    sub = ap.add_subparsers(dest="command", required=True)
    for name in modules:
        importlib.import_module(name).add_parser(sub)
    return ap


def run(prog: str, description: str, modules, argv=None) -> int:
    """Parse ``argv`` with the sub-commands of ``modules`` and run one; a :class:`DataError` (bad input, with a
    message saying what to do) is one line on stderr and exit code 2, never a traceback."""
    args = build_parser(prog, description, modules).parse_args(argv)
    from .schema import DataError
    try:
        return int(args.func(args) or 0)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def main(argv=None) -> int:
    return run("python -m nsynth_cnn", DESCRIPTION, COMMAND_MODULES, argv)


if __name__ == "__main__":
    sys.exit(main())
