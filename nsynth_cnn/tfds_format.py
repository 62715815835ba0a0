"""NSynth as TensorFlow Datasets prepares it (``<data_dir>/nsynth/full/<version>/nsynth-<split>.tfrecord-*``).

TFDS stores another schema than the official TFRecords: nested features flattened with ``/``
(``instrument/family``, ``instrument/source``, ``instrument/label``, ``qualities/<name>`` as 0/1 ints), ``pitch``,
``velocity``, ``audio`` (64,000 floats) and ``id`` (the note_str). :func:`parse_tfds` reads it into the element dict
of :mod:`nsynth_cnn.schema`, so ``tensorflow_datasets`` itself is not needed to read it.
"""
from __future__ import annotations

import json
import os

from .params import AUDIO, NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES, NSYNTH_SOURCE_NAMES
from .schema import element_from_parsed, tensorflow

QUALITY_KEYS = tuple(f"qualities/{q}" for q in NSYNTH_QUALITY_NAMES)
FAMILY_KEY = "instrument/family"
# our element key -> the TFDS features it is made from
_SOURCES = {"audio": ("audio",), "instrument_family": (FAMILY_KEY,), "instrument_family_str": (FAMILY_KEY,),
            "instrument_source": ("instrument/source",), "instrument_source_str": ("instrument/source",),
            "instrument": ("instrument/label",), "pitch": ("pitch",), "velocity": ("velocity",),
            "note_str": ("id",), "instrument_str": ("id",), "note": ("id",), "sample_rate": (),
            "qualities": QUALITY_KEYS}


def feature_spec() -> dict:
    tf = tensorflow()
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in
            ("pitch", "velocity", "instrument/label", FAMILY_KEY, "instrument/source")}
    spec["id"] = tf.io.FixedLenFeature([], tf.string)
    spec["audio"] = tf.io.FixedLenFeature([AUDIO.num_samples], tf.float32)
    spec.update({k: tf.io.FixedLenFeature([], tf.int64, default_value=0) for k in QUALITY_KEYS})
    return spec


def is_tfds(files: list[str]) -> bool:
    """True if ``files`` hold TFDS-format NSynth records: by the ``dataset_info.json`` / ``features.json`` TFDS
    writes beside them, else by the feature names of the first record."""
    if not files:
        return False
    folder = os.path.dirname(files[0])
    for name in ("dataset_info.json", "features.json"):
        meta = os.path.join(folder, name)
        if os.path.isfile(meta):
            try:
                with open(meta) as fh:
                    text = fh.read()
                if name == "dataset_info.json":
                    return json.loads(text).get("name") == "nsynth"
                return FAMILY_KEY.split("/")[0] in text and "family" in text and "audio" in text
            except (OSError, ValueError, AttributeError):
                continue
    try:
        from .data import compression_type
        tf = tensorflow()
        first = next(iter(tf.data.TFRecordDataset(files[0], compression_type(files[0]))))
        return FAMILY_KEY in tf.train.Example.FromString(first.numpy()).features.feature
    except Exception:       # unreadable / empty: the regular reader reports it
        return False


def parse_tfds(serialized, fields: tuple[str, ...] | None = None):
    """Parse a vector of TFDS NSynth records into the element dict of :func:`nsynth_cnn.schema.parse_serialized`
    (only ``fields``, the audio and the label, when given). TFDS lacks NSynth's global ``note`` id: a hash of the id
    stands in for it."""
    tf = tensorflow()
    spec = feature_spec()
    wanted = set(_SOURCES) if fields is None else set(fields) | {"audio", "instrument_family"}
    ex = tf.io.parse_example(serialized, {k: spec[k] for f in wanted for k in _SOURCES[f]})
    out = {}
    if "instrument_family" in wanted:
        out["instrument_family"] = ex[FAMILY_KEY]
    if "instrument_family_str" in wanted:
        out["instrument_family_str"] = tf.gather(tf.constant(NSYNTH_FAMILY_NAMES),
                                                 tf.clip_by_value(ex[FAMILY_KEY], 0, len(NSYNTH_FAMILY_NAMES) - 1))
    if "instrument_source" in wanted:
        out["instrument_source"] = ex["instrument/source"]
    if "instrument_source_str" in wanted:
        out["instrument_source_str"] = tf.gather(tf.constant(NSYNTH_SOURCE_NAMES), tf.clip_by_value(
            ex["instrument/source"], 0, len(NSYNTH_SOURCE_NAMES) - 1))
    for ours, theirs in (("instrument", "instrument/label"), ("pitch", "pitch"), ("velocity", "velocity")):
        if ours in wanted:
            out[ours] = ex[theirs]
    if "note_str" in wanted:
        out["note_str"] = ex["id"]
    if "instrument_str" in wanted:
        out["instrument_str"] = tf.strings.regex_replace(ex["id"], r"-[0-9]+-[0-9]+$", "")
    if "note" in wanted:
        out["note"] = tf.strings.to_hash_bucket_fast(ex["id"], 2 ** 31 - 1)
    if "sample_rate" in wanted:
        out["sample_rate"] = tf.fill(tf.shape(serialized)[:1], tf.constant(AUDIO.sample_rate_hz, tf.int64))
    if "qualities" in wanted:
        out["qualities"] = tf.stack([ex[k] for k in QUALITY_KEYS], axis=1)
    return element_from_parsed(out, ex["audio"])
