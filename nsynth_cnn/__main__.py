"""Command line: ``python -m nsynth_cnn {train,evaluate,predict,corpus,prepare,bench,serve} ...``.

Each sub-command lives in its own module, which adds its parser with ``add_parser(subparsers)``.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = ("train", "evaluate", "predict", "corpus", "prepare", "bench", "serve")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nsynth_cnn", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"nsynth_cnn.{name}")
        except ModuleNotFoundError as err:
            if err.name == f"nsynth_cnn.{name}":
                continue   # command not built in this checkout
            raise
        module.add_parser(sub)
    args = ap.parse_args(argv)
    from .data import DataError
    try:
        return int(args.func(args) or 0)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
