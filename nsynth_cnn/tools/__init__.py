"""Developer tools around the product: they import :mod:`nsynth_cnn`, never the other way round.

- :mod:`nsynth_cnn.tools.corpus`: renders the NSynth-format training corpus (and the freepats / tonejs
  yardsticks) from General-MIDI SoundFonts, GUS patches, recordings and procedural synths;
- :mod:`nsynth_cnn.tools.bench`: speed and memory benchmark (docs/performance.md);
- :mod:`nsynth_cnn.tools.serve`: a local web page that classifies an uploaded recording.

Command line: ``python -m nsynth_cnn.tools {corpus,bench,serve} ...``.
"""
import os

# the checkout that holds the package (``../shared`` lies beside it); the tools are two folders below it
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
