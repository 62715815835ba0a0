"""The NSynth TFRecord schema and the element every reader yields, plus :class:`DataError`.

An element is a dict: ``audio`` (float32, 64,000 samples at 16 kHz in [-1, 1]), ``label`` (0..9, our class
index; -1 for synth_lead, which readers drop) and NSynth's metadata (``note_str``, ``pitch``, ``velocity``,
``instrument_str``, ``instrument_family``, ...). TensorFlow is imported lazily (:func:`tensorflow`).
"""
from __future__ import annotations

import re
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


# ----------------------------------------------------------------------------------------------- the note contract
# Every reader (NSynth TFRecords, prepared int16 shards, TFDS records, JSON+wav, notes.csv) rejects the same notes
# with the same message, built here: an unknown family id, audio that is not 64,000 samples, NaN/inf samples, a
# missing field. The numpy readers check with check_family / check_audio / require_fields; the TFRecord parsers
# (graph code) with assert_notes in element_from_parsed and parse_prepared, whose tagged failures
# (or tf.io.parse_example's own, for a missing feature or a float audio list of another length) are turned into the
# same messages by :func:`error_from_tf` (called by ``data.translate_tf_error``).
FAMILY_RANGE = (f"NSynth instrument_family ids are 0..{len(NSYNTH_FAMILY_NAMES) - 1} ("
                + ", ".join(f"{i} {n}" for i, n in enumerate(NSYNTH_FAMILY_NAMES)) + ")")
FAMILY_ASSERT_TAG = "nsynth_cnn: instrument_family out of range"   # found in TF's error by translate_tf_error
LENGTH_ASSERT_TAG = "nsynth_cnn: audio length"
NONFINITE_ASSERT_TAG = "nsynth_cnn: audio not finite"
REQUIRED_FIELDS = INT_FEATURES + STR_FEATURES + ("qualities",)    # what the NSynth TFRecord schema requires


def family_error(where: str, value: Any, key: str = "instrument_family") -> DataError:
    """The one message every reader (TFRecord, JSON+wav, notes.csv) gives for a family that is not NSynth's."""
    return DataError(f"{where}: {key} {value!r} is not an NSynth family; {FAMILY_RANGE}. The data is not NSynth "
                     "data or is damaged: fix or drop that note.")


def length_error(where: str, samples: int | None) -> DataError:
    """The one message every reader gives for audio that is not 64,000 samples (``samples`` None: count unknown)."""
    have = f"has {samples} samples" if samples is not None else "does not have the expected length"
    return DataError(f"{where}: audio {have}, not {AUDIO.num_samples}: NSynth notes are 4 s at 16 kHz. Pad or trim "
                     "each note to 4 s (nsynth_cnn.audio.fit_length) and write the data again (nsynth_cnn.writers.write_tfrecord).")


def nonfinite_error(where: str) -> DataError:
    """The one message every reader gives for audio with NaN or infinite samples."""
    return DataError(f"{where}: audio has NaN or infinite samples; the note is damaged: fix or drop that note.")


def missing_error(where: str, key: str) -> DataError:
    """The one message every reader gives for a note without one of the fields its layout requires."""
    return DataError(f"{where}: the note has no {key}, a field every NSynth note has. The data is not NSynth data "
                     "or is damaged: fix or drop that note.")


def check_family(value: Any, where: str) -> int:
    """``value`` as an NSynth family id (0..10), or :func:`family_error` (:func:`missing_error` for None)."""
    if value is None:
        raise missing_error(where, "instrument_family")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or not 0 <= int(value) < len(NSYNTH_FAMILY_NAMES):
        raise family_error(where, value)
    return int(value)


def require_fields(meta: Mapping[str, Any], keys: tuple[str, ...], where: str) -> None:
    """:func:`missing_error` for the first of ``keys`` that ``meta`` lacks (absent, None or NaN)."""
    for k in keys:
        v = meta.get(k)
        if v is None or isinstance(v, float) and v != v:
            raise missing_error(where, k)


def check_audio(audio: Any, where: str) -> np.ndarray:
    """``audio`` as float32, or :func:`length_error` / :func:`nonfinite_error`."""
    audio = np.asarray(audio, np.float32)
    if audio.shape != (AUDIO.num_samples,):
        raise length_error(where, audio.shape[0] if audio.ndim == 1 else None)
    if not np.all(np.isfinite(audio)):
        raise nonfinite_error(where)
    return audio


def assert_notes(tag: str, bad, values, ex: Mapping):
    """Graph code: an assertion that no note of a parsed batch is ``bad`` (bool per note); on failure TF's error holds
    ``tag``, the bad notes' ``values`` and (when parsed) their note_str, for :func:`error_from_tf`."""
    tf = tensorflow()
    shown = [tag, "value:", tf.boolean_mask(values, bad)]
    if "note_str" in ex:
        shown += ["note_str:", tf.boolean_mask(ex["note_str"], bad)]
    return tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), shown, summarize=3)


def error_from_tf(full: str, source: Any) -> DataError | None:
    """The contract's message for a TensorFlow error text ``full`` raised while reading ``source`` (a failed
    :func:`assert_notes`, a missing feature or a float audio list of another length), else None."""
    note = re.search(r"\[note_str:\] \[([^\]\s]+)", full)
    where = f"{source}: note {note.group(1)}" if note else f"{source}: a note"
    value = re.search(r"\[value:\] \[(-?\d+)", full)
    if FAMILY_ASSERT_TAG in full:      # "assertion failed: [TAG] [value:] [99 ...] [note_str:] [name ...]"
        return family_error(where, int(value.group(1)) if value else "out of range")
    if LENGTH_ASSERT_TAG in full:
        return length_error(where, int(value.group(1)) if value else None)
    if NONFINITE_ASSERT_TAG in full:
        return nonfinite_error(where)
    missing = re.search(r"Feature: (\S+) \(data type: \w+\) is required but could not be found", full)
    if missing:
        return missing_error(where, missing.group(1))
    lower = full.lower()
    if "key: audio" in lower or "feature: audio" in lower or "audio" in lower and "shape" in lower:
        size = re.search(r"values size: (\d+)", lower)
        return length_error(where, int(size.group(1)) if size else None)
    return None


def element_from_parsed(ex: dict, audio):
    """The element dict from parsed (batched) features and the float32 audio: int32 ids, label (-1 for
    synth_lead). Shared by the NSynth, prepared-shard and TFDS parsers. A family id outside 0..10 or audio with
    NaN/inf samples fails (InvalidArgumentError tagged :data:`FAMILY_ASSERT_TAG` / :data:`NONFINITE_ASSERT_TAG`,
    naming the value and note; ``translate_tf_error`` turns it into :func:`family_error`'s /
    :func:`nonfinite_error`'s message) instead of being read as some other family or fed to the network."""
    tf = tensorflow()
    family64 = ex["instrument_family"]
    bad = tf.logical_or(family64 < 0, family64 >= len(NSYNTH_FAMILY_NAMES))
    finite = tf.reduce_all(tf.math.is_finite(audio), axis=-1)
    checks = [assert_notes(FAMILY_ASSERT_TAG, bad, family64, ex),
              assert_notes(NONFINITE_ASSERT_TAG, tf.logical_not(finite), tf.zeros_like(family64), ex)]
    with tf.control_dependencies(checks):
        family = tf.cast(tf.identity(family64), tf.int32)
        audio = tf.identity(audio)
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
    Fields, ids, shapes and samples are checked as the TFRecord parsers check them, with the same messages
    (``where`` names the note in messages): every field of :data:`REQUIRED_FIELDS` must be there."""
    where = where or f"note {meta.get('note_str', '?')}"
    require_fields(meta, REQUIRED_FIELDS, where)
    family = check_family(meta.get("instrument_family"), where)
    out = {}
    for k in INT_FEATURES:
        v = meta[k]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise DataError(f"{where}: {k} is {v!r}, not an integer as in NSynth's examples.json.")
        out[k] = np.int32(v)
    for k in STR_FEATURES:
        out[k] = str(meta[k]).encode()
    q = np.asarray(meta["qualities"])
    if q.shape != (len(NSYNTH_QUALITY_NAMES),) or not np.issubdtype(q.dtype, np.integer):
        raise DataError(f"{where}: qualities is {meta.get('qualities')!r}; NSynth notes have "
                        f"{len(NSYNTH_QUALITY_NAMES)} 0/1 flags ({', '.join(NSYNTH_QUALITY_NAMES)}).")
    out["qualities"] = q.astype(np.int32)
    out["audio"] = check_audio(audio, where)
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


