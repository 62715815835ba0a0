"""Saved networks: where they live and how they are loaded (the one place for both).

A weights folder holds ``<name>_cnn.keras`` (architecture + weights, no optimizer state) and its training
history ``<name>_cnn_history.json`` (per-epoch lists and ``meta``) for each name in :data:`MODEL_NAMES`.
"""
from __future__ import annotations

import json
import os

from .params import AUDIO, MODEL_NAMES, NUM_CLASSES  # noqa: F401 (MODEL_NAMES re-exported)
from .schema import DataError

DEFAULT_DIR = "weights"
"""The shipped networks (evaluated by default)."""
TRAIN_OUT_DIR = os.path.join("runs", "weights")
"""Where training writes unless told otherwise: a new folder, so the shipped ``weights/`` is replaced only when a
user names it (``train --out weights``)."""


class WeightsError(DataError):
    """Saved weights missing, unreadable, or not a model with our input/output contract."""


def weights_path(weights_dir: str, name: str) -> str:
    return os.path.join(weights_dir, f"{name}_cnn.keras")


def history_path(weights_dir: str, name: str, ext: str = "json") -> str:
    return os.path.join(weights_dir, f"{name}_cnn_history.{ext}")


def train_command(name: str, weights_dir: str = DEFAULT_DIR) -> str:
    """The command that makes ``weights_path(weights_dir, name)``."""
    return f"python -m nsynth_cnn train --model {name} --train PATH --valid PATH --out {weights_dir}"


def load_model_file(path: str, name: str | None = None):
    """A saved ``.keras`` network, checked to take ``(batch, 64000)`` waveforms and return ``(batch, 10)``
    probabilities, and to be the network ``name`` (default: the one its file name ``<name>_cnn.keras`` stands for;
    no such check for other file names) by :func:`network_identity`; :class:`WeightsError` (saying what to do)
    when it cannot be used."""
    import keras

    import nsynth_cnn  # noqa: F401  (registers the custom layers)
    if not os.path.isfile(path):
        raise WeightsError(f"{path} not found. Train it ({train_command(_name_of(path), os.path.dirname(path))}) "
                           "or restore weights/ from project1.zip.")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure means the same to the user
        if _version(keras.__version__) < MIN_KERAS:
            raise WeightsError(f"{path} cannot be loaded by Keras {keras.__version__}: this project's networks are "
                               f"saved by Keras {'.'.join(map(str, MIN_KERAS))} or newer, whose files older Keras "
                               "cannot read. Run: python -m pip install -U \"keras>=3.15,<4\"") from None
        raise WeightsError(f"{path} cannot be loaded ({type(err).__name__}: {str(err)[:200]}). The file is "
                           "damaged, incomplete or from another project/version: re-train it or restore it from "
                           "project1.zip.") from None
    shape_in, shape_out = tuple(model.input_shape), tuple(model.output_shape)
    if shape_in[1:] != (AUDIO.num_samples,) or shape_out[1:] != (NUM_CLASSES,):
        raise WeightsError(f"{path} takes {shape_in} and returns {shape_out}; this project's models take "
                           f"(batch, {AUDIO.num_samples}) waveforms and return (batch, {NUM_CLASSES}) "
                           "family probabilities. Use weights trained by this project.")
    expected = name or _expected_name(path)
    if expected is not None:
        found = network_identity(model)
        if found["name"] != expected:
            raise WeightsError(_identity_message(path, expected, found))
    return model


MIN_KERAS = (3, 15)     # the saved files use Keras 3.15's config keys (3.10-3.14 fail to read them; requirements.txt)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:2] if p.isdigit())


def load_trained(name: str, weights_dir: str = DEFAULT_DIR):
    """The saved network ``<weights_dir>/<name>_cnn.keras``, checked to be the ``name`` network (see
    :func:`load_model_file`)."""
    return load_model_file(weights_path(weights_dir, name), name)


def _front_ends() -> dict:
    """Each network's front-end layer classes (what sets the two apart inside a saved file)."""
    from . import features as F
    return {"waveform": (F.AntiAliasDownsample, F.GaborFilterbank), "logmel": (F.LogMelSpectrogram,)}


def network_identity(model) -> dict:
    """What a loaded network is, from what its ``.keras`` file already holds (so files saved before this check are
    recognised too): ``name``, one of :data:`MODEL_NAMES` by its front-end layers, else by the Keras model name
    ``<name>_cnn`` that ``models.build_model`` gives it, None when neither tells; ``front_end``, the classes of
    those layers; ``keras_name``, the model's Keras name."""
    layers = list(model.layers)
    found = {n: [type(lay).__name__ for lay in layers if isinstance(lay, classes)]
             for n, classes in _front_ends().items()}
    by_front = [n for n, classes in found.items() if classes]
    by_name = model.name[:-len("_cnn")] if model.name.endswith("_cnn") else None
    name = by_front[0] if len(by_front) == 1 else (by_name if not by_front and by_name in MODEL_NAMES else None)
    return {"name": name, "front_end": [c for classes in found.values() for c in classes], "keras_name": model.name}


def _identity_message(path: str, expected: str, found: dict) -> str:
    def title(name):
        return {"waveform": "waveform CNN", "logmel": "log-mel CNN"}.get(name, f"{name} CNN")
    folder = os.path.dirname(path) or "."
    fix = (f"Put the {title(expected)} there: restore {path} from project1.zip or train it "
           f"({train_command(expected, folder)}).")
    if found["name"] is None:
        return (f"{path} should hold the {title(expected)} but holds a network this project does not know (Keras "
                f"model {found['keras_name']!r}, no waveform or log-mel front end). {fix}")
    return (f"{path} holds the {title(found['name'])} (Keras model {found['keras_name']!r}, front end "
            f"{' + '.join(found['front_end'])}), not the {title(expected)} its name stands for: it was copied or "
            f"saved under the wrong name. {fix} The {title(found['name'])} belongs in "
            f"{weights_path(folder, found['name'])}.")


def file_sha256(path: str) -> str:
    """The SHA-256 of a file (hex), e.g. to record which weights file an evaluation used."""
    import hashlib
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_history(name: str, weights_dir: str = DEFAULT_DIR) -> dict:
    """``<weights_dir>/<name>_cnn_history.json`` (per-epoch lists + ``meta``); empty dict if absent."""
    path = history_path(weights_dir, name)
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _name_of(path: str) -> str:
    base = os.path.basename(path)
    return base[:-len("_cnn.keras")] if base.endswith("_cnn.keras") else "logmel"


def _expected_name(path: str) -> str | None:
    """The network a file name ``<name>_cnn.keras`` stands for (None for other names)."""
    base = os.path.basename(path)
    name = base[:-len("_cnn.keras")] if base.endswith("_cnn.keras") else None
    return name if name in MODEL_NAMES else None
