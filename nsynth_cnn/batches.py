"""Training input: batches of ``(audio, label[, sample weight])`` for ``model.fit`` from any NSynth source
(:mod:`nsynth_cnn.data` reads it), with the shuffling a family-ordered source needs, class-balanced weights, the
notes per family and the ``families_per_batch`` diagnostic.
"""
from __future__ import annotations

import glob
import json
import os
import warnings

import numpy as np

from . import shards
from .data import (iterate, jsonwav_dataset, jsonwav_listing, jsonwav_wav, nsynth_dataset, record_dataset,
                   record_parser, resolve_source, tfrecord_dataset)
from .params import NUM_CLASSES, nsynth_family_to_label
from .schema import LEAN_FIELDS, DataError, tensorflow


def training_dataset(path, *, batch_size: int, shuffle_buffer: int, seed: int,
                     class_weights: np.ndarray | None = None, repeat: bool = False, cache: bool = False):
    """Batches of ``(audio, label[, sample_weight])`` for ``model.fit``.

    Shuffling: the official train file is sorted by family, so a shuffle buffer smaller than a family
    gives single-class batches. Several shard files are read interleaved and shuffled at file level; a JSON+wav
    folder is read in a seeded random note order; for the official single file, pass the path through
    :func:`nsynth_cnn.prepare.ensure_mixed` first (one-time conversion to shuffled int16 shards, reused).
    :func:`families_per_batch` measures the result.
    """
    tf = tensorflow()
    kind, files = resolve_source(path)
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def to_xy(e):
        if weights is None:
            return e["audio"], e["label"]
        return e["audio"], e["label"], tf.gather(weights, e["label"])

    if cache and not _fits_in_ram(kind, files):
        warnings.warn(f"{path}: its audio as float32 would fill more than half the RAM; not caching it "
                      "(each epoch reads it again; prepared shards keep that fast).", stacklevel=2)
        cache = False
    if kind == "tfrecord" and not cache and shards.is_prepared(files):
        return _prepared_batches(files, batch_size, shuffle_buffer, seed, repeat, to_xy)
    ds = (tfrecord_dataset(files, shuffle_seed=seed, fields=LEAN_FIELDS) if kind == "tfrecord"
          else jsonwav_dataset(files[0], shuffle_seed=seed))
    ds = ds.map(to_xy, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        ds = ds.cache()
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def _prepared_batches(files, batch_size, shuffle_buffer, seed, repeat, to_xy):
    """Training batches streamed from prepared int16 shards (no cache). The shuffle buffer holds the serialized
    records: half the bytes of parsed float32 audio (4,096 notes: 0.5 instead of 1 GB). Each batch is then
    parsed in one call and goes to the model as it is (no per-note unbatch and re-batch): 1.3-1.5x the notes/s of
    the element-wise reader (docs/performance.md). Prepared shards hold no synth_lead, so nothing is filtered.
    NSynth's own float32 records are as big serialized as parsed, and filtering synth_lead out of them before
    batching cost more than it saved, so they keep the element-wise reader."""
    tf = tensorflow()
    ds = record_dataset(files, shuffle_seed=seed)
    if shuffle_buffer:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    parser = record_parser(files)
    ds = ds.batch(batch_size).map(lambda s: to_xy(parser(s, LEAN_FIELDS)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def _fits_in_ram(kind: str, files: list[str], fraction: float = 0.5) -> bool:
    """Whether the source's audio as float32 (what ``Dataset.cache()`` keeps) fits in ``fraction`` of RAM."""
    if kind == "jsonwav":
        size = 2 * sum(os.path.getsize(f) for f in glob.glob(os.path.join(files[0], "audio", "*.wav")))
    else:
        size = sum(os.path.getsize(f) for f in files) * (2 if shards.is_prepared(files) else 1)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return True
    return size < fraction * ram


def label_counts(path) -> np.ndarray:
    """Notes per class. Uses ``stats.json`` beside the data when present (written by corpus/prepare); for a
    JSON+wav folder the families in examples.json / notes.csv (no audio decoded); otherwise reads the labels."""
    kind, files = resolve_source(path)
    stats = os.path.join(os.path.dirname(files[0]) if kind == "tfrecord" else files[0], "stats.json")
    if os.path.isfile(stats):
        with open(stats) as fh:
            counts = json.load(fh).get("label_counts")
        if counts and len(counts) == NUM_CLASSES:
            return np.asarray(counts, np.int64)
    if kind == "jsonwav":       # the families are in the listing: no wav is decoded, each is only looked for
        folder = files[0]
        _, meta, notes = jsonwav_listing(folder)
        kept = [n for n in notes if n is not None]
        for note_str in kept:
            jsonwav_wav(folder, note_str)
        labels = [nsynth_family_to_label(int(meta[n]["instrument_family"])) for n in kept]
        return np.bincount(np.asarray(labels, np.int64), minlength=NUM_CLASSES).astype(np.int64)
    ds = nsynth_dataset(path).map(lambda e: e["label"])
    counts = np.zeros(NUM_CLASSES, np.int64)
    for lab in iterate(ds.batch(4096), path):
        counts += np.bincount(lab, minlength=NUM_CLASSES)
    return counts


def families_per_batch(dataset, batches: int = 20) -> float:
    """Mean number of distinct labels per batch over the first ``batches`` batches of a training dataset of
    ``(x, y[, w])`` batches (y: int labels, or one-hot / soft rows, counted by their largest entry). About 1-2
    for a family-sorted source read through a small shuffle buffer; close to 10 when the notes are mixed."""
    seen = []
    for batch in dataset.take(batches).as_numpy_iterator():
        y = np.asarray(batch[1])
        labels = y.argmax(axis=-1) if y.ndim > 1 else y.reshape(-1)
        seen.append(len(np.unique(labels)))
    if not seen:
        raise DataError("families_per_batch: the dataset yielded no batch.")
    return float(np.mean(seen))


def balanced_class_weights(counts: np.ndarray) -> np.ndarray:
    """Inverse-frequency weights, normalised so that the average weight per note is 1."""
    counts = np.asarray(counts, np.float64)
    present = counts > 0
    w = np.zeros_like(counts)
    w[present] = counts[present].sum() / (present.sum() * counts[present])
    return w.astype(np.float32)


