"""``python -m nsynth_cnn prepare --src nsynth-train.tfrecord --out DIR [--shards N]``: one-time rewrite of
an NSynth split into shuffled shards of compact audio, for training on the full dataset.

The official train split is one ~74 GB TFRecord of float32 audio, ordered by instrument family. Read as it
is, a 4,096-note shuffle buffer only ever holds one or two families (single-class batches for hours), and
every epoch reads 256 KB per note. ``prepare`` fixes both, streaming, with bounded memory:

1. Stream the source once (any source :func:`nsynth_cnn.data.nsynth_dataset` reads) and send each note to a
   random shard (seeded), as int16 PCM in a bytes feature plus the NSynth metadata: 128 KB per note, half
   the float32 size, no precision lost for NSynth (its audio is 16-bit PCM to begin with).
2. Shuffle each shard in memory (one shard at a time: memory is bounded by the shard size, ~128 MB by
   default) and write it out as ``nsynth-prepared-SSSSS-of-NNNNN.tfrecord``.
3. Write ``stats.json`` (``label_counts`` etc., read by :func:`nsynth_cnn.data.label_counts`) and, last,
   the ``prepared.json`` marker. The readers in :mod:`nsynth_cnn.data` recognise a folder (or glob) of
   prepared shards by that marker and parse them with :func:`parse_prepared` into the same element dict as
   :func:`nsynth_cnn.data.parse_serialized`, so ``train --train DIR`` / ``evaluate --data DIR`` just work.

synth_lead notes (dropped by every reader anyway) are not copied.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import data
from .shards import (AUDIO_KEY, PCM_SCALE, PREPARED_MARKER, SHARD_PATTERN, STATS_FILE,  # noqa: F401
                     FORMAT, dequantize, is_prepared, parse_prepared, quantize, serialize_prepared)
from .params import AUDIO, FAMILIES, NSYNTH_QUALITY_NAMES, NUM_CLASSES, nsynth_family_to_label

TARGET_SHARD_BYTES = 128 << 20         # auto shard count: ~128 MB per shard
BYTES_PER_NOTE = 2 * AUDIO.num_samples + 512   # int16 audio + metadata, roughly


# ----------------------------------------------------------------------------------------------- writing
def auto_shards(src_bytes: int, float_source: bool = True) -> int:
    """Shards of ~128 MB: the official 74 GB float32 train file -> 289 shards."""
    out_bytes = src_bytes / 2 if float_source else src_bytes
    return max(1, int(round(out_bytes / TARGET_SHARD_BYTES)))


def source_bytes(src) -> int:
    kind, files = data.resolve_source(src)
    if kind == "jsonwav":
        return sum(os.path.getsize(f) for f in glob.glob(os.path.join(files[0], "audio", "*.wav"))) * 2
    return sum(os.path.getsize(f) for f in files)


def _check_out_dir(out: str, overwrite: bool) -> None:
    if not os.path.isdir(out):
        os.makedirs(out)
        return
    ours = glob.glob(os.path.join(out, "nsynth-prepared-*.tfrecord")) + [
        os.path.join(out, f) for f in (PREPARED_MARKER, STATS_FILE) if os.path.isfile(os.path.join(out, f))]
    others = [f for f in os.listdir(out) if os.path.join(out, f) not in ours and f != ".prepare-tmp"]
    if others:
        raise data.DataError(f"--out {out!r} holds other files ({', '.join(sorted(others)[:3])}...): give "
                             "prepare an empty or new folder (the readers take every *.tfrecord in it).")
    if os.path.isfile(os.path.join(out, PREPARED_MARKER)) and not overwrite:
        raise data.DataError(f"{out!r} already holds prepared shards (prepared.json). Pass --overwrite to "
                             "prepare again, or train on it as it is.")
    for f in ours:
        os.remove(f)


def _iter_source_batches(src, batch: int = 128):
    """Parsed numpy batches (dict of arrays) of any readable source, synth_lead already dropped."""
    ds = data.nsynth_dataset(src).batch(batch).prefetch(2)
    yield from data.iterate(ds, src)


def _unbatch(batches: Iterable[Mapping[str, np.ndarray]]):
    for b in batches:
        pcm = quantize(b["audio"])        # vectorised over the batch
        for i in range(len(pcm)):
            yield {k: v[i] for k, v in b.items() if k != "audio"}, pcm[i]


def prepare_elements(elements: Iterable[tuple[Mapping[str, Any], np.ndarray]], out: str, shards: int, *,
                     seed: int = 0, source: str = "", log: Callable[[str], None] | None = print,
                     overwrite: bool = False) -> dict:
    """Write ``(element, int16 pcm)`` pairs (any order) as ``shards`` shuffled prepared shards in ``out``.

    Pass 1 streams the pairs to per-shard bucket files (random shard per note, seeded); pass 2 loads one
    bucket at a time, shuffles it and writes the final shard. Peak memory ~ one shard. Returns the stats.
    """
    tf = data.tensorflow()
    if shards < 1:
        raise data.DataError(f"--shards must be >= 1 (got {shards}).")
    log = log or (lambda msg: None)
    _check_out_dir(out, overwrite)
    tmp = os.path.join(out, ".prepare-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    rng = np.random.default_rng(seed)
    buckets = [os.path.join(tmp, f"bucket-{i:05d}") for i in range(shards)]
    writers = [tf.io.TFRecordWriter(b) for b in buckets]
    counts = np.zeros(NUM_CLASSES, np.int64)
    shard_notes = np.zeros(shards, np.int64)
    start = last = time.time()
    n = 0
    try:
        targets = iter(())
        for element, pcm in elements:
            label = nsynth_family_to_label(int(element["instrument_family"]))
            if label < 0:
                continue                  # synth_lead (the readers drop it anyway)
            try:
                s = next(targets)
            except StopIteration:
                targets = iter(rng.integers(0, shards, 4096).tolist())
                s = next(targets)
            writers[s].write(serialize_prepared(element, pcm))
            counts[label] += 1
            shard_notes[s] += 1
            n += 1
            if time.time() - last > 30:
                last = time.time()
                log(f"  pass 1: {n} notes ({n / (last - start):.0f} notes/s)")
    finally:
        for w in writers:
            w.close()
    if n == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise data.DataError(f"{source or 'the source'}: no notes to prepare (empty, or only synth_lead).")
    pass1 = time.time() - start
    log(f"  pass 1: {n} notes into {shards} buckets in {pass1:.0f} s")
    files = []
    for i, bucket in enumerate(buckets):
        records = [r.numpy() for r in tf.data.TFRecordDataset(bucket)]
        order = rng.permutation(len(records))
        name = SHARD_PATTERN.format(i, shards)
        with tf.io.TFRecordWriter(os.path.join(tmp, name)) as w:
            for j in order:
                w.write(records[j])
        del records
        os.remove(bucket)
        os.replace(os.path.join(tmp, name), os.path.join(out, name))
        files.append(name)
    pass2 = time.time() - start - pass1
    total_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    stats = {"notes": int(n), "label_counts": counts.tolist(), "families": list(FAMILIES),
             "shard_notes": shard_notes.tolist()}
    _write_json(os.path.join(out, STATS_FILE), stats)
    _write_json(os.path.join(out, PREPARED_MARKER), {
        "format": FORMAT, "source": str(source), "notes": int(n), "shards": shards, "files": files,
        "seed": seed, "bytes": int(total_bytes),
        "audio": f"bytes feature {AUDIO_KEY!r}: {AUDIO.num_samples} little-endian int16 samples at "
                 f"{AUDIO.sample_rate_hz} Hz; float = int16 / {int(PCM_SCALE)}",
        "seconds": {"pass1_distribute": round(pass1, 1), "pass2_shuffle": round(pass2, 1)}})
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"  pass 2: shuffled and wrote {shards} shards ({total_bytes / 1e9:.2f} GB) in {pass2:.0f} s")
    return {**stats, "shards": shards, "bytes": int(total_bytes), "seconds": round(pass1 + pass2, 1)}


def _write_json(path: str, obj) -> None:
    with open(path + ".tmp", "w") as fh:
        json.dump(obj, fh, indent=1)
    os.replace(path + ".tmp", path)


def prepare(src, out: str, shards: int | None = None, *, seed: int = 0, overwrite: bool = False,
            log: Callable[[str], None] | None = print) -> dict:
    """Rewrite ``src`` (TFRecord file/glob/folder or JSON+wav folder) as shuffled int16 shards in ``out``."""
    src = os.fspath(src)
    kind, files = data.resolve_source(src)
    if kind == "tfrecord" and is_prepared(files) and os.path.realpath(os.path.dirname(files[0])) == \
            os.path.realpath(out):
        raise data.DataError(f"--src and --out are the same prepared folder {out!r}.")
    if shards is not None and shards < 1:
        raise data.DataError(f"--shards must be >= 1 (got {shards}).")
    size = source_bytes(src)
    if shards is None:
        shards = auto_shards(size, float_source=not (kind == "tfrecord" and is_prepared(files)))
    if log:
        log(f"prepare: {src} ({size / 1e9:.2f} GB) -> {out} ({shards} shards, seed {seed})")
    est_shard = size / 2 / shards
    if est_shard > 2e9:
        print(f"warning: ~{est_shard / 1e9:.1f} GB per shard; pass 2 holds one shard in memory. Use more "
              "--shards.", file=sys.stderr)
    return prepare_elements(_unbatch(_iter_source_batches(src)), out, shards, seed=seed, source=src,
                            log=log, overwrite=overwrite)


# ----------------------------------------------------------------------------------------------- CLI
def add_parser(sub):
    ap = sub.add_parser("prepare", help="one-time rewrite of an NSynth split into shuffled int16 shards",
                        description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", required=True, help="NSynth TFRecord file/glob/folder or JSON+wav folder")
    ap.add_argument("--out", required=True, help="new folder for the shards, stats.json and prepared.json")
    ap.add_argument("--shards", type=int, default=None,
                    help="number of shards (default: ~128 MB each, e.g. 289 for the full train split)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the shard assignment and shuffles")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier prepare run in --out")
    ap.set_defaults(func=_main)


def _main(args):
    stats = prepare(args.src, args.out, args.shards, seed=args.seed, overwrite=args.overwrite)
    print(f"prepared {stats['notes']} notes into {stats['shards']} shards in {args.out} "
          f"({stats['bytes'] / 1e9:.2f} GB, {stats['seconds']:.0f} s); notes per family: "
          + ", ".join(f"{f}={c}" for f, c in zip(FAMILIES, stats["label_counts"])))
    print(f"train on it with: python -m nsynth_cnn train --model logmel --train {args.out} --valid ...")
    return 0
