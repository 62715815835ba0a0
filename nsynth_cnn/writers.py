"""Writers of NSynth-format data: the official TFRecord schema (``tf.train.Example``, deterministic bytes) and
the JSON+wav layout, with NSynth's metadata and naming (``family_source_NNN-PPP-VVV``). The corpus renderer, the
tests and the benchmark make their notes with these.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .atomic import write_json_atomic
from .params import AUDIO, NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES, NSYNTH_SOURCE_NAMES
from .schema import INT_FEATURES, STR_FEATURES, DataError, tensorflow


def _bytes(v):
    tf = tensorflow()
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[v if isinstance(v, bytes) else str(v).encode()]))


def _ints(vs):
    tf = tensorflow()
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in np.atleast_1d(vs)]))


def serialize_note(meta: Mapping[str, Any], audio: np.ndarray) -> bytes:
    """One NSynth-schema tf.train.Example, serialized deterministically. ``meta`` uses NSynth's JSON keys (see
    :func:`note_metadata`)."""
    tf = tensorflow()
    audio = np.asarray(audio, np.float32)
    if audio.shape != (AUDIO.num_samples,):
        raise DataError(f"note {meta.get('note_str')}: audio has shape {audio.shape}, expected "
                        f"({AUDIO.num_samples},). Pad/trim to 4 s at 16 kHz first (nsynth_cnn.audio.fit_length).")
    q = np.asarray(meta.get("qualities", [0] * len(NSYNTH_QUALITY_NAMES)), np.int64)
    feats = {k: _ints(meta[k]) for k in INT_FEATURES}
    feats.update({k: _bytes(meta[k]) for k in STR_FEATURES})
    feats["audio"] = tf.train.Feature(float_list=tf.train.FloatList(value=audio.tolist()))  # list: 4x faster
    feats["qualities"] = _ints(q)
    names = [n for n, on in zip(NSYNTH_QUALITY_NAMES, q) if on]
    feats["qualities_str"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[n.encode() for n in names]))
    # deterministic: map order fixed, so the same notes give the same bytes in every process
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(deterministic=True)


def note_metadata(*, family: str, source: str, instrument: int, pitch: int, velocity: int,
                  note: int = 0, instrument_str: str | None = None,
                  qualities: Iterable[int] | None = None) -> dict:
    """NSynth JSON metadata for one note, with NSynth's naming (``family_source_NNN-PPP-VVV``)."""
    fam_id = NSYNTH_FAMILY_NAMES.index(family)
    src_id = NSYNTH_SOURCE_NAMES.index(source)
    inst_str = instrument_str or f"{family}_{source}_{instrument:03d}"
    return {
        "note": int(note), "note_str": f"{inst_str}-{pitch:03d}-{velocity:03d}",
        "instrument": int(instrument), "instrument_str": inst_str,
        "pitch": int(pitch), "velocity": int(velocity), "sample_rate": AUDIO.sample_rate_hz,
        "qualities": list(qualities) if qualities is not None else [0] * len(NSYNTH_QUALITY_NAMES),
        "qualities_str": [n for n, on in zip(NSYNTH_QUALITY_NAMES, qualities or []) if on],
        "instrument_family": fam_id, "instrument_family_str": family,
        "instrument_source": src_id, "instrument_source_str": source,
    }


def write_tfrecord(path: str, notes: Iterable[tuple[Mapping[str, Any], np.ndarray]]) -> int:
    """Write ``(meta, audio)`` pairs as an NSynth-schema TFRecord, atomically. Returns the count. The same notes
    give the same bytes in any process (:func:`serialize_note` is deterministic)."""
    tf = tensorflow()
    tmp = f"{path}.tmp"
    n = 0
    with tf.io.TFRecordWriter(tmp) as w:
        for meta, audio in notes:
            w.write(serialize_note(meta, audio))
            n += 1
    os.replace(tmp, path)
    return n


def write_jsonwav(folder: str, notes: Iterable[tuple[Mapping[str, Any], np.ndarray]]) -> int:
    """Write ``(meta, audio)`` pairs in NSynth's JSON+wav layout (16-bit PCM wav). Returns the count."""
    import soundfile as sf
    os.makedirs(os.path.join(folder, "audio"), exist_ok=True)
    meta_all = {}
    for meta, audio in notes:
        sf.write(os.path.join(folder, "audio", f"{meta['note_str']}.wav"),
                 np.clip(audio, -1.0, 1.0), AUDIO.sample_rate_hz, subtype="PCM_16")
        meta_all[meta["note_str"]] = dict(meta)
    write_json_atomic(os.path.join(folder, "examples.json"), meta_all, sort_keys=True)
    return len(meta_all)
