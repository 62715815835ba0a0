"""The prepared-shard format: NSynth notes as int16 PCM in a bytes feature, shuffled across shards.

``python -m nsynth_cnn prepare`` (:mod:`nsynth_cnn.prepare`) writes it; the readers of :mod:`nsynth_cnn.data`
recognise a folder of such shards by its ``prepared.json`` marker and parse them with :func:`parse_prepared` into
the same element dict as NSynth's own records (:func:`nsynth_cnn.schema.parse_serialized`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from .params import AUDIO, NSYNTH_QUALITY_NAMES
from .schema import (INT_FEATURES, LENGTH_ASSERT_TAG, STR_FEATURES, assert_notes, check_audio,
                     element_from_parsed, length_error, tensorflow)

PREPARED_MARKER = "prepared.json"
STATS_FILE = "stats.json"
FORMAT = "nsynth_cnn.prepared/1"
AUDIO_KEY = "audio_pcm16"              # little-endian int16 PCM, AUDIO.num_samples samples
PCM_SCALE = 32768.0                    # float = int16 / 32768 (NSynth's own 16-bit -> float mapping)
SHARD_PATTERN = "nsynth-prepared-{:05d}-of-{:05d}.tfrecord"

def is_prepared(files: list[str]) -> bool:
    """True if ``files`` are shards written by :func:`prepare` (a ``prepared.json`` marker beside them)."""
    return bool(files) and os.path.isfile(os.path.join(os.path.dirname(files[0]), PREPARED_MARKER))


def quantize(audio: np.ndarray) -> np.ndarray:
    """float audio in [-1, 1] -> int16 PCM (round to nearest; clipped). Error <= 0.5 / 32768 in range."""
    pcm = np.rint(np.asarray(audio, np.float32) * PCM_SCALE)
    return np.clip(pcm, -32768, 32767).astype("<i2")


def dequantize(pcm: np.ndarray) -> np.ndarray:
    return (np.asarray(pcm, np.float32) / PCM_SCALE).astype(np.float32)


def prepared_feature_spec() -> dict:
    tf = tensorflow()
    spec = {k: tf.io.FixedLenFeature([], tf.int64) for k in INT_FEATURES}
    spec.update({k: tf.io.FixedLenFeature([], tf.string) for k in STR_FEATURES})
    spec[AUDIO_KEY] = tf.io.FixedLenFeature([], tf.string)
    spec["qualities"] = tf.io.FixedLenFeature([len(NSYNTH_QUALITY_NAMES)], tf.int64)
    return spec


def parse_prepared(serialized, fields: tuple[str, ...] | None = None):
    """Parse a vector of prepared records into the element dict of :func:`nsynth_cnn.schema.parse_serialized`
    (only ``fields``, e.g. ``schema.LEAN_FIELDS``, when given)."""
    tf = tensorflow()
    spec = prepared_feature_spec()
    if fields is not None:
        spec = {AUDIO_KEY if k == "audio" else k: spec[AUDIO_KEY if k == "audio" else k] for k in fields}
    ex = tf.io.parse_example(serialized, spec)
    nbytes = tf.strings.length(ex[AUDIO_KEY])
    wrong = tf.not_equal(nbytes, 2 * AUDIO.num_samples)      # checked before decode_raw/reshape fail on it
    with tf.control_dependencies([assert_notes(LENGTH_ASSERT_TAG, wrong, nbytes // 2, ex)]):
        pcm = tf.io.decode_raw(ex[AUDIO_KEY], tf.int16, little_endian=True)
    audio = tf.reshape(tf.cast(pcm, tf.float32) * (1.0 / PCM_SCALE), [-1, AUDIO.num_samples])
    return element_from_parsed(ex, audio)


def serialize_prepared(element: Mapping[str, Any], pcm: np.ndarray | None = None) -> bytes:
    """One element dict (numpy values, as the readers yield them) -> a prepared tf.train.Example, serialized
    deterministically (the same bytes in every process, so a resumed ``prepare`` matches an uninterrupted one)."""
    tf = tensorflow()
    where = f"note {element.get('note_str')!r}"
    if pcm is None:
        pcm = quantize(check_audio(element["audio"], where))
    if pcm.shape != (AUDIO.num_samples,):
        raise length_error(where, pcm.shape[0] if pcm.ndim == 1 else None)
    ex = tf.train.Example()
    feat = ex.features.feature
    for k in INT_FEATURES:
        feat[k].int64_list.value.append(int(element[k]))
    for k in STR_FEATURES:
        v = element[k]
        feat[k].bytes_list.value.append(v if isinstance(v, bytes) else str(v).encode())
    feat["qualities"].int64_list.value.extend(int(q) for q in np.asarray(element["qualities"]).ravel())
    feat[AUDIO_KEY].bytes_list.value.append(np.ascontiguousarray(pcm, "<i2").tobytes())
    return ex.SerializeToString(deterministic=True)    # map order fixed: the same bytes in every process


