"""Developer tools: ``python -m nsynth_cnn.tools {corpus,bench,serve} ...``."""
import sys

from nsynth_cnn.__main__ import run

COMMAND_MODULES = ("nsynth_cnn.tools.corpus", "nsynth_cnn.tools.bench", "nsynth_cnn.tools.serve")
# plain text: --help prints it as it is
DESCRIPTION = ("Developer tools, never imported by the product: render an NSynth-format corpus, benchmark speed "
               "and memory, serve a web page that tries both networks on any recording.")


def main(argv=None) -> int:
    return run("python -m nsynth_cnn.tools", DESCRIPTION, COMMAND_MODULES, argv)


if __name__ == "__main__":
    sys.exit(main())
