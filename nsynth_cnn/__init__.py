"""NSynth instrument-family CNNs: data layer, two raw-audio Keras models, training, evaluation, plots.

``import nsynth_cnn`` registers the custom layers, so ``keras.models.load_model("weights/<name>.keras")``
works with no other setup.
"""
import contextlib as _contextlib
import os as _os

_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@_contextlib.contextmanager
def _quiet_native_stderr():
    """TensorFlow's C++ start-up banner (oneDNN, CPU features) ignores TF_CPP_MIN_LOG_LEVEL: silence the
    process's stderr file descriptor while Keras/TensorFlow are first imported. Python errors still raise."""
    try:
        saved, devnull = _os.dup(2), _os.open(_os.devnull, _os.O_WRONLY)
    except OSError:
        yield
        return
    _os.dup2(devnull, 2)
    try:
        yield
    finally:
        _os.dup2(saved, 2)
        _os.close(saved)
        _os.close(devnull)


with _quiet_native_stderr():
    from . import features  # noqa: E402,F401  (registers the custom Keras layers)
from .params import FAMILIES, NUM_CLASSES  # noqa: E402,F401

__version__ = "1.0.0"
