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


class WeightsError(DataError):
    """Saved weights missing, unreadable, or not a model with our input/output contract."""


def weights_path(weights_dir: str, name: str) -> str:
    return os.path.join(weights_dir, f"{name}_cnn.keras")


def history_path(weights_dir: str, name: str, ext: str = "json") -> str:
    return os.path.join(weights_dir, f"{name}_cnn_history.{ext}")


def train_command(name: str, weights_dir: str = DEFAULT_DIR) -> str:
    """The command that makes ``weights_path(weights_dir, name)``."""
    return f"python -m nsynth_cnn train --model {name} --train PATH --valid PATH --out {weights_dir}"


def load_model_file(path: str):
    """A saved ``.keras`` network, checked to take ``(batch, 64000)`` waveforms and return ``(batch, 10)``
    probabilities; :class:`WeightsError` (saying what to do) when it cannot be used."""
    import keras

    import nsynth_cnn  # noqa: F401  (registers the custom layers)
    if not os.path.isfile(path):
        raise WeightsError(f"{path} not found. Train it ({train_command(_name_of(path), os.path.dirname(path))}) "
                           "or restore weights/ from project1.zip.")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as err:  # noqa: BLE001 - any load failure means the same to the user
        raise WeightsError(f"{path} cannot be loaded ({type(err).__name__}: {str(err)[:200]}). The file is "
                           "damaged, incomplete or from another project/version: re-train it or restore it from "
                           "project1.zip.") from None
    shape_in, shape_out = tuple(model.input_shape), tuple(model.output_shape)
    if shape_in[1:] != (AUDIO.num_samples,) or shape_out[1:] != (NUM_CLASSES,):
        raise WeightsError(f"{path} takes {shape_in} and returns {shape_out}; this project's models take "
                           f"(batch, {AUDIO.num_samples}) waveforms and return (batch, {NUM_CLASSES}) "
                           "family probabilities. Use weights trained by this project.")
    return model


def load_trained(name: str, weights_dir: str = DEFAULT_DIR):
    """The saved network ``<weights_dir>/<name>_cnn.keras`` (see :func:`load_model_file`)."""
    return load_model_file(weights_path(weights_dir, name))


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
