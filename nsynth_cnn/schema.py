"""The NSynth TFRecord schema and the element every reader yields, plus :class:`DataError`.

An element is a dict: ``audio`` (float32, 64,000 samples at 16 kHz in [-1, 1]), ``label`` (0..9, our class
index; -1 for synth_lead, which readers drop) and NSynth's metadata (``note_str``, ``pitch``, ``velocity``,
``instrument_str``, ``instrument_family``, ...). TensorFlow is imported lazily (:func:`tensorflow`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .params import (AUDIO, NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES, SYNTH_LEAD_ID, nsynth_family_to_label)


class DataError(Exception):
    """Input data that cannot be used; the message says what is wrong and what to do."""


INT_FEATURES = ("note", "instrument", "pitch", "velocity", "sample_rate",
                "instrument_family", "instrument_source")
STR_FEATURES = ("note_str", "instrument_str", "instrument_family_str", "instrument_source_str")
META_KEYS = INT_FEATURES + STR_FEATURES


def tensorflow():
    """The tensorflow module, imported on first use."""
    import tensorflow as tf  # imported lazily: `predict` on one file should not pay for tf.data setup
    return tf


def feature_spec() -> dict:
    """The exact NSynth TFRecord schema (tf.train.Example features)."""
    tf = tensorflow()
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in INT_FEATURES}
    spec.update({k: tf.io.FixedLenFeature([], tf.string) for k in STR_FEATURES})
    spec["audio"] = tf.io.FixedLenFeature([AUDIO.num_samples], tf.float32)
    spec["qualities"] = tf.io.FixedLenFeature([len(NSYNTH_QUALITY_NAMES)], tf.int64)
    spec["qualities_str"] = tf.io.VarLenFeature(tf.string)
    return spec


def _family_table():
    """NSynth family id -> class index, -1 for synth_lead (a static lookup usable in graph code)."""
    return np.array([nsynth_family_to_label(i) if i != SYNTH_LEAD_ID else -1
                     for i in range(len(NSYNTH_FAMILY_NAMES))], np.int32)


LEAN_FIELDS = ("audio", "instrument_family")   # all that training needs (audio, label)


def parse_serialized(serialized, fields: tuple[str, ...] | None = None):
    """Parse a *vector* of serialized NSynth examples into our element dict of batched tensors (graph
    code). Parsing a batch at once (``tf.io.parse_example``) costs a fraction of one call per record;
    ``fields`` (e.g. :data:`LEAN_FIELDS`) parses only those features."""
    tf = tensorflow()
    spec = feature_spec()
    ex = tf.io.parse_example(serialized, spec if fields is None else {k: spec[k] for k in fields})
    return element_from_parsed(ex, ex["audio"])


FAMILY_RANGE = (f"NSynth instrument_family ids are 0..{len(NSYNTH_FAMILY_NAMES) - 1} ("
                + ", ".join(f"{i} {n}" for i, n in enumerate(NSYNTH_FAMILY_NAMES)) + ")")
FAMILY_ASSERT_TAG = "nsynth_cnn: instrument_family out of range"   # found in TF's error by translate_tf_error


def family_error(where: str, value: Any, key: str = "instrument_family") -> DataError:
    """The one message every reader (TFRecord, JSON+wav, notes.csv) gives for a family that is not NSynth's."""
    return DataError(f"{where}: {key} {value!r} is not an NSynth family; {FAMILY_RANGE}. The data is not NSynth "
                     "data or is damaged: fix or drop that note.")


def check_family(value: Any, where: str) -> int:
    """``value`` as an NSynth family id (0..10), or :func:`family_error`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) < len(NSYNTH_FAMILY_NAMES):
        raise family_error(where, value)
    return int(value)


def element_from_parsed(ex: dict, audio):
    """The element dict from parsed (batched) features and the float32 audio: int32 ids, label (-1 for
    synth_lead). Shared by the NSynth parser and the prepared-shard parser. A family id outside 0..10 fails
    (InvalidArgumentError tagged :data:`FAMILY_ASSERT_TAG`, naming the value and note; ``translate_tf_error``
    turns it into :func:`family_error`'s message) instead of being read as some other family."""
    tf = tensorflow()
    family64 = ex["instrument_family"]
    bad = tf.logical_or(family64 < 0, family64 >= len(NSYNTH_FAMILY_NAMES))
    shown = [FAMILY_ASSERT_TAG, "value:", tf.boolean_mask(family64, bad)]
    if "note_str" in ex:
        shown += ["note_str:", tf.boolean_mask(ex["note_str"], bad)]
    check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), shown, summarize=3)
    with tf.control_dependencies([check]):
        family = tf.cast(tf.identity(family64), tf.int32)
    out = {k: tf.cast(ex[k], tf.int32) for k in INT_FEATURES if k in ex}
    out.update({k: ex[k] for k in STR_FEATURES if k in ex})
    out["instrument_family"] = family
    out["audio"] = audio
    if "qualities" in ex:
        out["qualities"] = tf.cast(ex["qualities"], tf.int32)
    out["label"] = tf.gather(tf.constant(_family_table()), family)
    return out


def metadata_element(meta: Mapping[str, Any], audio: np.ndarray, where: str | None = None) -> dict:
    """Build our element dict (numpy values) from NSynth JSON metadata and a 64,000-sample waveform.
    Ids and shapes are checked as the TFRecord parser checks them (``where`` names the note in messages)."""
    where = where or f"note {meta.get('note_str', '?')}"
    family = check_family(meta.get("instrument_family"), where)
    out = {}
    for k in INT_FEATURES:
        v = meta.get(k, AUDIO.sample_rate_hz if k == "sample_rate" else 0)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{where}: {k} is {v!r}, not an integer as in NSynth's examples.json.")
        out[k] = np.int32(v)
    for k in STR_FEATURES:
        out[k] = str(meta.get(k, "")).encode()
    q = np.asarray(meta.get("qualities", [0] * len(NSYNTH_QUALITY_NAMES)))
    if q.shape != (len(NSYNTH_QUALITY_NAMES),) or not np.issubdtype(q.dtype, np.integer):
        raise DataError(f"{where}: qualities is {meta.get('qualities')!r}; NSynth notes have "
                        f"{len(NSYNTH_QUALITY_NAMES)} 0/1 flags ({', '.join(NSYNTH_QUALITY_NAMES)}).")
    out["qualities"] = q.astype(np.int32)
    out["audio"] = np.asarray(audio, np.float32)
    if out["audio"].shape != (AUDIO.num_samples,):
        raise DataError(f"{where}: audio has shape {out['audio'].shape}, not ({AUDIO.num_samples},): NSynth "
                        "notes are 4 s at 16 kHz.")
    out["label"] = np.int32(nsynth_family_to_label(family))
    return out


def element_signature() -> dict:
    tf = tensorflow()
    sig = {k: tf.TensorSpec([], tf.int32) for k in INT_FEATURES}
    sig.update({k: tf.TensorSpec([], tf.string) for k in STR_FEATURES})
    sig["qualities"] = tf.TensorSpec([len(NSYNTH_QUALITY_NAMES)], tf.int32)
    sig["audio"] = tf.TensorSpec([AUDIO.num_samples], tf.float32)
    sig["label"] = tf.TensorSpec([], tf.int32)
    return sig


