"""NSynth instrument-family CNNs: data layer, two raw-audio Keras models, training, evaluation, plots.

``import nsynth_cnn`` registers the custom layers, so ``keras.models.load_model("weights/<name>.keras")``
works with no other setup.
"""
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from . import features  # noqa: E402,F401  (registers the custom Keras layers)
from .params import FAMILIES, NUM_CLASSES  # noqa: E402,F401

__version__ = "1.0.0"
