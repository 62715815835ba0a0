"""Developer tools: ``python -m nsynth_cnn.tools {corpus,bench,serve} ...``."""
import sys

from nsynth_cnn.__main__ import run

COMMAND_MODULES = ("nsynth_cnn.tools.corpus", "nsynth_cnn.tools.bench", "nsynth_cnn.tools.serve")


def main(argv=None) -> int:
    return run("python -m nsynth_cnn.tools", __doc__.splitlines()[0], COMMAND_MODULES, argv)


if __name__ == "__main__":
    sys.exit(main())
