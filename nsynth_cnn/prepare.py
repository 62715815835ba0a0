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
3. Write ``stats.json`` (``label_counts`` etc., read by :func:`nsynth_cnn.batches.label_counts`) and, last,
   the ``prepared.json`` marker. The readers in :mod:`nsynth_cnn.data` recognise a folder (or glob) of
   prepared shards by that marker and parse them with :func:`parse_prepared` into the same element dict as
   :func:`nsynth_cnn.schema.parse_serialized`, so ``train --train DIR`` / ``evaluate --data DIR`` just work.

synth_lead notes (dropped by every reader anyway) are not copied. The free disk space is checked first (about
half the float32 source, plus a margin). Pass 1 works in chunks of :data:`CHUNK_NOTES` source notes, each with
bucket files of its own and recorded in ``.prepare-tmp/progress.json`` when done; pass 2 keeps the shards
already written. So a run that was interrupted resumes where it stopped when started again (same --src and
--out), and gives the same shards as an uninterrupted run.

:func:`ensure_mixed` does all this with no manual step: training on ``nsynth-train.tfrecord`` (or a few shards)
converts it once into ``nsynth-train.tfrecord.prepared/`` beside it (or under ``$NSYNTH_CNN_CACHE`` when the data
folder is read-only) and reuses that folder while the source files are unchanged (path, size, mtime).
"""
from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from . import data, runlock, schema
from .atomic import write_json_atomic
from .tfds_format import is_tfds
from .shards import (AUDIO_KEY, PCM_SCALE, PREPARED_MARKER, SHARD_PATTERN, STATS_FILE,
                     FORMAT, is_prepared, quantize, serialize_prepared)
from .params import AUDIO, FAMILIES, NUM_CLASSES, nsynth_family_to_label

TARGET_SHARD_BYTES = 128 << 20         # auto shard count: ~128 MB per shard
BYTES_PER_NOTE = 2 * AUDIO.num_samples + 512   # int16 audio + metadata, roughly
TMP_DIR = ".prepare-tmp"               # buckets + progress.json of a run in progress (removed at the end)
PROGRESS_FILE = "progress.json"
CHUNK_NOTES = 8192                     # pass 1 works in chunks of this many source notes: the unit of resumption
MIXED_MIN_FILES = 16                   # this many files or more: interleaved reading mixes them (ensure_mixed)
CACHE_ENV = "NSYNTH_CNN_CACHE"         # where ensure_mixed converts when the data folder is not writable
SPACE_MARGIN = 1.05                    # free space asked for: 1.05 x the estimated output + 2 shards + 256 MB
SPACE_EXTRA = 256 << 20


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


def estimate_output_bytes(kind: str, files: list[str]) -> int:
    """Bytes of the prepared shards of a source: int16 = half its float32 audio. A gzip file (by its magic bytes,
    whatever its name) is counted at its own size (float32 audio compresses to at most ~half), prepared shards and
    wav files as they are."""
    if kind == "jsonwav":
        return sum(os.path.getsize(f) for f in glob.glob(os.path.join(files[0], "audio", "*.wav")))
    if is_prepared(files):
        return sum(os.path.getsize(f) for f in files)
    return sum(os.path.getsize(f) if data.compression_type(f) else os.path.getsize(f) // 2 for f in files)


def _estimate_notes(kind: str, files: list[str]) -> int | None:
    """Notes in an uncompressed TFRecord source, from its size (for the progress bar); None if unknown."""
    if kind != "tfrecord" or any(data.compression_type(f) for f in files):
        return None
    per_note = (2 if is_prepared(files) else 4) * AUDIO.num_samples + 600
    return max(1, round(sum(os.path.getsize(f) for f in files) / per_note))


def check_free_space(out: str, need: int, src: str) -> None:
    """Raise :class:`DataError` unless the disk that holds (or will hold) ``out`` has ``need`` bytes free."""
    probe = os.path.abspath(out)
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free
    if need > free:
        raise schema.DataError(
            f"Not enough disk space to prepare {src}: its shuffled int16 copy needs about {need / 1e9:.1f} GB "
            f"free in {out}, and the disk holding {probe} has {free / 1e9:.1f} GB free. Free "
            f"{(need - free) / 1e9:.1f} GB there, or prepare it on another disk (python -m nsynth_cnn prepare "
            f"--src {src} --out DIR, then train on DIR; the automatic copy goes to ${CACHE_ENV} when the data "
            "folder is read-only).")


def _space_needed(out: str, est: int, shards: int) -> int:
    """Pass 1 writes the buckets (~ the output), pass 2 adds one shard at a time and deletes its buckets;
    what an interrupted run already wrote is counted as done."""
    written = sum(os.path.getsize(f) for f in glob.glob(os.path.join(out, TMP_DIR, "*")) +
                  glob.glob(os.path.join(out, "nsynth-prepared-*.tfrecord")) if os.path.isfile(f))
    return max(0, int(est * SPACE_MARGIN + 2 * est / shards + SPACE_EXTRA) - written)


def source_signature(kind: str, files: list[str]) -> list[dict]:
    """What identifies a source's content for reuse: each file's real path, size and mtime (for JSON+wav, of
    its examples.json / notes.csv)."""
    if kind == "jsonwav":
        files = [f for f in (os.path.join(files[0], n) for n in ("examples.json", "notes.csv")) if os.path.isfile(f)]
    sig = []
    for f in files:
        st = os.stat(f)
        sig.append({"path": os.path.realpath(f), "size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)})
    return sig


def _check_out_dir(out: str, overwrite: bool, keep_shards: bool = False) -> None:
    if not os.path.isdir(out):
        os.makedirs(out)
        return
    ours = glob.glob(os.path.join(out, "nsynth-prepared-*.tfrecord")) + [
        os.path.join(out, f) for f in (PREPARED_MARKER, STATS_FILE) if os.path.isfile(os.path.join(out, f))]
    others = [f for f in os.listdir(out) if os.path.join(out, f) not in ours and f not in (TMP_DIR, runlock.LOCK_NAME)]
    if others:
        raise schema.DataError(f"--out {out!r} holds other files ({', '.join(sorted(others)[:3])}...): give "
                             "prepare an empty or new folder (the readers take every *.tfrecord in it).")
    if os.path.isfile(os.path.join(out, PREPARED_MARKER)) and not overwrite:
        raise schema.DataError(f"{out!r} already holds prepared shards (prepared.json). Pass --overwrite to "
                             "prepare again, or train on it as it is.")
    for f in ours:
        if not (keep_shards and f.endswith(".tfrecord")):
            os.remove(f)


def _record_parser(files: list[str]):
    return data.source_parser(files)


def _source_elements(src, skip: int = 0, batch: int = 128):
    """``(element, int16 pcm)`` pairs of ``src`` in a fixed order, from its item ``skip`` on (resumption).

    TFRecord sources: every record, synth_lead included (:func:`prepare_elements` drops it), the first ``skip``
    read but not parsed; JSON+wav: the notes in note_str order."""
    tf = schema.tensorflow()
    kind, files = data.resolve_source(src)
    if kind == "jsonwav":
        ds = data.jsonwav_dataset(files[0]).skip(skip).batch(batch)
    else:
        parser = _record_parser(files)
        ds = data.record_dataset(files).skip(skip).batch(batch).map(parser, num_parallel_calls=tf.data.AUTOTUNE)
    yield from _unbatch(data.iterate(ds.prefetch(2), src))


def _unbatch(batches: Iterable[Mapping[str, np.ndarray]]):
    for b in batches:
        pcm = quantize(b["audio"])        # vectorised over the batch
        for i in range(len(pcm)):
            yield {k: v[i] for k, v in b.items() if k != "audio"}, pcm[i]


def _bar(total, initial: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, unit="notes", disable=quiet, mininterval=1.0,
                smoothing=0.05, file=sys.stderr)


def _bucket(tmp: str, shard: int, chunk: int) -> str:
    return os.path.join(tmp, f"bucket-{shard:05d}-chunk-{chunk:06d}")


def _progress_state(tmp: str) -> dict | None:
    try:
        with open(os.path.join(tmp, PROGRESS_FILE)) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


def prepare_elements(elements: Iterable[tuple[Mapping[str, Any], np.ndarray]] | Callable[[int], Iterable],
                     out: str, shards: int, *, seed: int = 0, source: str = "",
                     log: Callable[[str], None] | None = print, overwrite: bool = False,
                     source_id: Any = None, chunk_notes: int = CHUNK_NOTES, total: int | None = None) -> dict:
    """Write ``(element, int16 pcm)`` pairs (any order) as ``shards`` shuffled prepared shards in ``out``.

    ``elements``: the pairs, or a callable ``skip -> pairs`` that starts after the first ``skip`` (used to
    resume; an iterable is sliced instead). Pass 1 reads them in chunks of ``chunk_notes``: each chunk sends
    its notes to random shards (seeded per chunk) in bucket files of its own, closes them and records itself in
    ``.prepare-tmp/progress.json``. Pass 2 loads one shard's buckets at a time, shuffles them (peak memory ~
    one shard) and writes the final shard. With a ``source_id`` (:func:`prepare` passes the source files' path,
    size and mtime), a run interrupted in either pass resumes: done chunks are not read again (``skip``),
    shards already written are kept, and the result is the same as an uninterrupted run's. Returns the stats.
    """
    if shards < 1:
        raise schema.DataError(f"--shards must be >= 1 (got {shards}).")
    if chunk_notes < 1:
        raise schema.DataError(f"chunk_notes must be >= 1 (got {chunk_notes}).")
    quiet = log is None
    log = log or (lambda msg: None)
    tmp = os.path.join(out, TMP_DIR)
    progress = os.path.join(tmp, PROGRESS_FILE)
    job = {"format": FORMAT, "source": source_id, "shards": shards, "chunk_notes": chunk_notes}
    state = None
    if source_id is not None and not os.path.isfile(os.path.join(out, PREPARED_MARKER)):
        state = _progress_state(tmp)
    if state is not None and state.get("job") == json.loads(json.dumps(job)):
        _check_out_dir(out, overwrite, keep_shards=True)
        seed = state["seed"]
        log(f"  resuming an interrupted run: pass 1 {'done' if state['pass1_done'] else 'at'} "
            f"{state['consumed']} notes ({state['chunks_done']} chunks)")
    else:
        _check_out_dir(out, overwrite)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = {"job": job, "seed": seed, "chunks_done": 0, "consumed": 0, "notes": 0,
                 "label_counts": [0] * NUM_CLASSES, "shard_notes": [0] * shards, "pass1_done": False,
                 "seconds": {"pass1_distribute": 0.0, "pass2_shuffle": 0.0}}
        write_json_atomic(progress, state)
    if not state["pass1_done"]:
        _distribute(elements, tmp, state, progress, total, quiet)
    if state["notes"] == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise schema.DataError(f"{source or 'the source'}: no notes to prepare (empty, or only synth_lead).")
    log(f"  pass 1: {state['notes']} notes into {shards} buckets in {state['seconds']['pass1_distribute']:.0f} s")
    files = _shuffle_shards(out, tmp, state, progress, quiet)
    n, seconds = state["notes"], state["seconds"]
    total_bytes = sum(os.path.getsize(os.path.join(out, f)) for f in files)
    stats = {"notes": int(n), "label_counts": state["label_counts"], "families": list(FAMILIES),
             "shard_notes": state["shard_notes"]}
    write_json_atomic(os.path.join(out, STATS_FILE), stats)
    write_json_atomic(os.path.join(out, PREPARED_MARKER), {
        "format": FORMAT, "source": str(source), "source_id": source_id, "notes": int(n), "shards": shards,
        "files": files, "seed": state["seed"], "bytes": int(total_bytes),
        "audio": f"bytes feature {AUDIO_KEY!r}: {AUDIO.num_samples} little-endian int16 samples at "
                 f"{AUDIO.sample_rate_hz} Hz; float = int16 / {int(PCM_SCALE)}",
        "seconds": {k: round(v, 1) for k, v in seconds.items()}})
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"  pass 2: shuffled and wrote {shards} shards ({total_bytes / 1e9:.2f} GB) in "
        f"{seconds['pass2_shuffle']:.0f} s")
    return {**stats, "shards": shards, "bytes": int(total_bytes), "seconds": round(sum(seconds.values()), 1)}


def _distribute(elements, tmp: str, state: dict, progress: str, total: int | None, quiet: bool) -> None:
    """Pass 1, chunk by chunk (see :func:`prepare_elements`; the job's shards, chunk size and seed are in
    ``state``); updates ``state`` and saves it to ``progress`` after each chunk."""
    tf = schema.tensorflow()
    shards, chunk_notes, seed = state["job"]["shards"], state["job"]["chunk_notes"], state["seed"]
    for f in glob.glob(os.path.join(tmp, "bucket-*")):       # the unfinished chunk of an interrupted run
        if int(f.rsplit("-", 1)[1]) >= state["chunks_done"]:
            os.remove(f)
    skip = state["consumed"]
    it = iter(elements(skip) if callable(elements) else itertools.islice(elements, skip, None))
    bar = _bar(total, skip, "prepare pass 1/2 (distribute)", quiet)
    try:
        while True:
            chunk, start = state["chunks_done"], time.time()
            targets = np.random.default_rng([seed, 0, chunk]).integers(0, shards, chunk_notes)
            counts = np.zeros(NUM_CLASSES, np.int64)
            shard_notes = np.zeros(shards, np.int64)
            writers, n_in = {}, 0
            try:
                for element, pcm in itertools.islice(it, chunk_notes):
                    runlock.check_interrupt()   # Ctrl-C stops here, between notes (never mid-file)
                    s = int(targets[n_in])
                    n_in += 1
                    label = nsynth_family_to_label(int(element["instrument_family"]))
                    if label >= 0:              # synth_lead (the readers drop it anyway) is not copied
                        if s not in writers:
                            writers[s] = tf.io.TFRecordWriter(_bucket(tmp, s, chunk))
                        writers[s].write(serialize_prepared(element, pcm))
                        counts[label] += 1
                        shard_notes[s] += 1
                    bar.update(1)
            finally:
                for w in writers.values():
                    w.close()
            if n_in:
                state["chunks_done"] = chunk + 1
                state["consumed"] += n_in
                state["notes"] += int(counts.sum())
                state["label_counts"] = (np.asarray(state["label_counts"]) + counts).tolist()
                state["shard_notes"] = (np.asarray(state["shard_notes"]) + shard_notes).tolist()
                state["seconds"]["pass1_distribute"] += time.time() - start
                write_json_atomic(progress, state)
            if n_in < chunk_notes:
                break
    finally:
        bar.close()
    state["pass1_done"] = True
    write_json_atomic(progress, state)


def _shuffle_shards(out: str, tmp: str, state: dict, progress: str, quiet: bool) -> list[str]:
    """Pass 2: each shard's buckets loaded, shuffled (seeded per shard) and written; shards already in ``out``
    (an interrupted run wrote them) are kept."""
    shards = state["job"]["shards"]
    files = []
    bar = _bar(state["notes"], 0, "prepare pass 2/2 (shuffle)", quiet)
    try:
        for i in range(shards):
            runlock.check_interrupt()
            name = SHARD_PATTERN.format(i, shards)
            files.append(name)
            parts = sorted(glob.glob(os.path.join(tmp, f"bucket-{i:05d}-chunk-*")))
            if os.path.isfile(os.path.join(out, name)):
                for p in parts:
                    os.remove(p)
                bar.update(state["shard_notes"][i])
                continue
            start = time.time()
            _shuffle_one(parts, out, tmp, name, state["shard_notes"][i], np.random.default_rng([state["seed"], 1, i]))
            state["seconds"]["pass2_shuffle"] += time.time() - start
            write_json_atomic(progress, state)
            bar.update(state["shard_notes"][i])
    finally:
        bar.close()
    return files


def _shuffle_one(parts: list[str], out: str, tmp: str, name: str, expected: int, rng) -> None:
    """One shard of pass 2: its bucket files loaded, shuffled, written to ``tmp`` and moved into ``out``."""
    tf = schema.tensorflow()
    records = []
    if parts:
        for b in tf.data.TFRecordDataset(parts).batch(1024).as_numpy_iterator():
            runlock.check_interrupt()
            records.extend(b)
    if len(records) != expected:
        raise schema.DataError(f"{tmp}: shard {name} has {len(records)} of its {expected} notes (temporary files "
                             f"damaged or deleted). Delete {out} and prepare again.")
    order = rng.permutation(len(records))
    with tf.io.TFRecordWriter(os.path.join(tmp, name)) as w:
        for j in order:
            w.write(records[j])
    del records
    os.replace(os.path.join(tmp, name), os.path.join(out, name))
    for p in parts:
        os.remove(p)


def prepare(src, out: str, shards: int | None = None, *, seed: int = 0, overwrite: bool = False,
            log: Callable[[str], None] | None = print, chunk_notes: int = CHUNK_NOTES) -> dict:
    """Rewrite ``src`` (TFRecord file/glob/folder or JSON+wav folder) as shuffled int16 shards in ``out``.

    Checks the free disk space first; shows progress (notes, notes/s); a run interrupted (Ctrl-C, crash, full
    disk) resumes when started again with the same source and ``out``."""
    src = os.fspath(src)
    out = os.fspath(out)
    kind, files = data.resolve_source(src)
    if kind == "tfrecord" and is_prepared(files) and os.path.realpath(os.path.dirname(files[0])) == \
            os.path.realpath(out):
        raise schema.DataError(f"--src and --out are the same prepared folder {out!r}.")
    if shards is not None and shards < 1:
        raise schema.DataError(f"--shards must be >= 1 (got {shards}).")
    size = source_bytes(src)
    if shards is None:
        shards = auto_shards(size, float_source=not (kind == "tfrecord" and is_prepared(files)))
    est = estimate_output_bytes(kind, files)
    resume = "it resumes where it stopped (converted chunks and written shards are kept)"
    with runlock.stopping(out, f"converting {src} into {out}", resume,
                          deferred=True, need_bytes=int(est * SPACE_MARGIN + SPACE_EXTRA)), \
            runlock.claim(out, "prepare", log=log,
                          advice=f"Wait for it to finish (then use {out} as it is), or stop it (Ctrl-C in its "
                                 "terminal; a re-run resumes it), or give this run another --out."):
        runlock.check_readable(src, "--src")        # before anything is written
        check_free_space(out, _space_needed(out, est, shards), src)
        if log:
            log(f"prepare: {src} ({size / 1e9:.2f} GB) -> {out} ({shards} shards, ~{est / 1e9:.2f} GB, seed {seed})")
        est_shard = est / shards
        if est_shard > 2e9:
            print(f"warning: ~{est_shard / 1e9:.1f} GB per shard; pass 2 holds one shard in memory. Use more "
                  "--shards.", file=sys.stderr)
        return prepare_elements(lambda skip: _source_elements(src, skip), out, shards, seed=seed, source=src,
                                log=log, overwrite=overwrite, source_id=source_signature(kind, files),
                                chunk_notes=chunk_notes, total=_estimate_notes(kind, files))


# ----------------------------------------------------------------------------------------------- automatic use
def prepared_locations(path, cache_dir: str | None = None) -> list[str]:
    """Where :func:`ensure_mixed` keeps the prepared copy of ``path``: ``<dir>/<name>.prepared`` beside it, else
    (data folder not writable) ``<cache>/prepared/<name>-<hash of the path>``, cache = ``cache_dir``, else
    ``$NSYNTH_CNN_CACHE``, else ``~/.cache/nsynth_cnn``."""
    p = os.path.abspath(os.fspath(path)).rstrip(os.sep) or os.sep
    name = re.sub(r"[*?\[\]]", "_", os.path.basename(p)) or "source"
    cache = cache_dir or os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "nsynth_cnn")
    digest = hashlib.sha1(p.encode()).hexdigest()[:12]
    return [os.path.join(os.path.dirname(p), f"{name}.prepared"),
            os.path.join(os.path.abspath(cache), "prepared", f"{name}-{digest}")]


def _matching_copy(folder: str, signature: list[dict]) -> bool:
    try:
        with open(os.path.join(folder, PREPARED_MARKER)) as fh:
            marker = json.load(fh)
    except (OSError, ValueError):
        return False
    return (marker.get("format") == FORMAT and marker.get("source_id") == signature
            and all(os.path.isfile(os.path.join(folder, f)) for f in marker.get("files", [None])))


def _writable(folder: str) -> bool:
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)


def ensure_mixed(path, *, seed: int = 0, log: Callable[[str], None] | None = print, shards: int | None = None,
                 chunk_notes: int = CHUNK_NOTES, cache_dir: str | None = None) -> str:
    """A path whose notes come out family-mixed through :func:`nsynth_cnn.batches.training_dataset`.

    Prepared shards, sources of 16 or more TFRecord files (read interleaved in shuffled file order), NSynth as
    TFDS stores it (TFDS shuffles the notes when it writes them) and JSON+wav folders (read in a seeded random
    note order) are returned as they are. A source of 1..15 TFRecord files
    (the official ``nsynth-train.tfrecord``, sorted by family) is converted once with :func:`prepare` into
    :func:`prepared_locations` (beside it, else the cache) and that folder is returned; later calls reuse it
    while its ``prepared.json`` matches the source files (path, size, mtime). An interrupted conversion resumes;
    a short disk raises :class:`DataError` before anything is written. ``seed`` seeds a new conversion only.
    """
    path = os.fspath(path)
    kind, files = data.resolve_source(path)
    if kind == "jsonwav" or is_prepared(files) or len(files) >= MIXED_MIN_FILES or is_tfds(files):
        return path
    signature = source_signature(kind, files)
    places = prepared_locations(path, cache_dir)
    for place in places:
        if _matching_copy(place, signature):
            if log:
                log(f"{path}: using its shuffled copy {place}")
            return place
    out = next((p for p in places if _writable(p)), None)
    if out is None:
        raise schema.DataError(f"{path} must be converted once to shuffled shards (too few files to mix "
                             "families by reading them interleaved; NSynth's own file is sorted by family), but "
                             f"neither {places[0]} nor {places[1]} can be written. Set {CACHE_ENV} to a writable "
                             "folder with room for half the source's size.")
    # two runs started at once: the second waits (told who converts), then reuses the first's copy
    with runlock.claim(out, "prepare", flag="the shuffled copy", wait=True, log=log or print):
        if _matching_copy(out, signature):
            if log:
                log(f"{path}: using its shuffled copy {out}")
            return out
        if log:
            log(f"{path}: {len(files)} TFRecord file(s), too few to mix the families by reading them interleaved "
                "(NSynth's own train file is sorted by family); converting once to shuffled int16 shards "
                f"in {out} (reused next time; if interrupted, the next run resumes).")
        prepare(path, out, shards, seed=seed, overwrite=True, log=log, chunk_notes=chunk_notes)
    return out


# ----------------------------------------------------------------------------------------------- CLI
def add_parser(sub):
    ap = sub.add_parser("prepare", help="one-time rewrite of an NSynth split into shuffled int16 shards",
                        description="One-time rewrite of an NSynth split (e.g. the official nsynth-train.tfrecord, "
                                    "ordered by family) into shuffled shards of int16 audio, for training on the "
                                    "full dataset: batches mix every family and each note is read at half the "
                                    "size. Training does this by itself when needed; this command does it by hand.")
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
