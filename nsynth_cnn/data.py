"""NSynth data readers: the TFRecord (NSynth's schema, prepared shards, TFDS) and JSON+wav layouts, one element each.

Training batches are made in :mod:`nsynth_cnn.batches`; NSynth-format files are written by :mod:`nsynth_cnn.writers`.

Every reader yields the element of :mod:`nsynth_cnn.schema` (audio, label, NSynth metadata); prepared int16
shards (:mod:`nsynth_cnn.shards`) are read like any other TFRecord source.

Bad input raises :class:`DataError` with a message that says what to do.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np

from . import schema, shards
from .audio import load_audio
from .params import (AUDIO, NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES, NSYNTH_SOURCE_NAMES,
                     SYNTH_LEAD_ID)
from .schema import (STR_FEATURES, DataError, element_signature, metadata_element,
                     parse_serialized, tensorflow)


# ----------------------------------------------------------------------------------------------- sources
def resolve_source(path: str | os.PathLike) -> tuple[str, list[str]]:
    """Decide what ``path`` is: ``("tfrecord", files)`` or ``("jsonwav", [folder])``.

    Accepts a TFRecord file, a glob of them, a folder holding ``*.tfrecord*`` files, or an NSynth JSON+wav
    folder (``examples.json`` + ``audio/<note_str>.wav``).
    """
    path = os.fspath(path)
    if any(ch in path for ch in "*?["):
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise DataError(f"No files match {path!r}. Check the pattern, or pass the folder that holds "
                            "the NSynth data (TFRecord files or examples.json + audio/).")
        return "tfrecord", files
    if not os.path.exists(path):
        raise DataError(f"Data path {path!r} does not exist. Download NSynth (TFRecord or JSON+wav) from "
                        "https://magenta.tensorflow.org/datasets/nsynth, or use the sample in data/.")
    if os.path.isdir(path):
        if any(os.path.isfile(os.path.join(path, f)) for f in ("examples.json", "notes.csv")):
            return "jsonwav", [path]
        files = sorted(f for f in glob.glob(os.path.join(path, "*.tfrecord*")) if os.path.isfile(f))
        if files:
            return "tfrecord", files
        raise DataError(f"Folder {path!r} holds neither examples.json (NSynth JSON+wav layout), notes.csv, nor "
                        "*.tfrecord files. Point --data at an NSynth split.")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path!r} is empty (0 bytes): the download or copy was cut short; fetch it again.")
    if path.endswith(".json"):
        return "jsonwav", [os.path.dirname(path) or "."]
    return "tfrecord", [path]


PARSE_BATCH = 32   # records parsed per tf.io.parse_example call


def tfrecord_dataset(files: list[str], *, parallel_reads: int | None = None, shuffle_seed: int | None = None,
                     fields: tuple[str, ...] | None = None):
    """Parsed, synth_lead-filtered elements from NSynth TFRecord files (parallel reads and parsing).

    With ``shuffle_seed`` (training) the file order is shuffled and records of up to 16 files are
    interleaved one at a time, without a fixed output order; otherwise the order is deterministic.
    ``fields=LEAN_FIELDS`` parses only the audio and family (elements: audio, instrument_family, label).
    Records in the TFDS schema (NSynth as ``tensorflow_datasets`` stores it) are recognised and parsed into the
    same elements (:mod:`nsynth_cnn.tfds_format`).
    """
    tf = tensorflow()
    ds = record_dataset(files, parallel_reads=parallel_reads, shuffle_seed=shuffle_seed)
    parser = source_parser(files)
    ds = ds.batch(PARSE_BATCH).map(lambda s: parser(s, fields), num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    return ds.filter(lambda e: e["label"] >= 0)


def record_dataset(files: list[str], *, parallel_reads: int | None = None, shuffle_seed: int | None = None):
    """The serialized records of ``files`` (not parsed), read interleaved; with ``shuffle_seed`` in
    shuffled file order and without a fixed output order."""
    tf = tensorflow()
    files_ds = tf.data.Dataset.from_tensor_slices((files, [compression_type(f) for f in files]))
    if shuffle_seed is not None:
        files_ds = files_ds.shuffle(len(files), seed=shuffle_seed)
    return files_ds.interleave(
        lambda f, compression: tf.data.TFRecordDataset(f, compression_type=compression, buffer_size=8 << 20),
        cycle_length=parallel_reads or min(len(files), 16 if shuffle_seed is not None else 8), block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=shuffle_seed is None)


def record_parser(files: list[str]):
    """The (batched) parse function for ``files``: :func:`parse_serialized` for NSynth-schema TFRecords, or
    ``shards.parse_prepared`` for int16 shards written by ``python -m nsynth_cnn prepare`` (recognised by
    the ``prepared.json`` marker beside them). Both give the same element dict."""
    return shards.parse_prepared if shards.is_prepared(files) else parse_serialized


def source_parser(files: list[str]):
    """:func:`record_parser`, or the TFDS-schema parser when ``files`` are NSynth as TFDS prepares it."""
    from . import tfds_format
    if not shards.is_prepared(files) and tfds_format.is_tfds(files):
        return tfds_format.parse_tfds
    return record_parser(files)


GZIP_MAGIC = b"\x1f\x8b"


def compression_type(path: str) -> str:
    """``"GZIP"`` when the file starts with gzip's magic bytes (1f 8b), whatever its name, else ``""``: every
    reader opens a TFRecord with this. An uncompressed TFRecord whose first record length happens to start with
    those bytes is told apart by the checksum of that length (bytes 8-11; a gzip header holds no such thing)."""
    head = _head(path, 12) or b""
    if not head.startswith(GZIP_MAGIC):
        return ""
    return "" if len(head) == 12 and int.from_bytes(head[8:], "little") == _masked_crc32c(head[:8]) else "GZIP"


def _masked_crc32c(blob: bytes) -> int:
    """TFRecord's masked CRC-32C (Castagnoli) of a few bytes (its record headers)."""
    crc = 0xFFFFFFFF
    for byte in blob:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    crc ^= 0xFFFFFFFF
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def note_audio(wav: str, where: str) -> np.ndarray:
    """The samples of a JSON+wav note as its file holds them (float32, mono), not padded or trimmed, so that
    :func:`schema.metadata_element` checks them as the TFRecord readers check theirs (64,000 samples, finite;
    the same messages). A wav at NSynth's 16 kHz is read as it is (several channels averaged); a file at another
    rate is checked for 4 s and NaN/inf samples, then resampled by :func:`load_audio`, which also reports files
    that cannot be decoded."""
    import soundfile as sf
    try:
        with sf.SoundFile(wav) as snd:
            rate, frames = snd.samplerate, snd.frames
            if round(frames * AUDIO.sample_rate_hz / rate) != AUDIO.num_samples:
                raise schema.length_error(where, round(frames * AUDIO.sample_rate_hz / rate))
            audio = snd.read(frames, dtype="float32", always_2d=True).mean(axis=1)
    except DataError:
        raise
    except Exception:  # noqa: BLE001 - not a file libsndfile reads: load_audio says why, or decodes it
        return load_audio(wav, context="NSynth note")
    if rate == AUDIO.sample_rate_hz:
        return audio
    if not np.all(np.isfinite(audio)):
        raise schema.nonfinite_error(where)
    return load_audio(wav, context="NSynth note")


def _read_notes_csv(path: str) -> dict:
    """A ``notes.csv`` listing (note_str, instrument_family_str, instrument_source_str, pitch, velocity)
    stands in for examples.json, e.g. for a hand-collected folder of real NSynth notes."""
    import pandas as pd
    try:
        rows = pd.read_csv(path).to_dict("records")
    except Exception as err:  # noqa: BLE001 - any parse failure is the file's fault
        raise DataError(f"{path} cannot be read as CSV ({type(err).__name__}: {str(err)[:200]}).") from None
    need = ("note_str", "instrument_family_str", "pitch", "velocity")
    missing = [c for c in need if rows and c not in rows[0]]
    if not rows or missing:
        raise DataError(f"{path} has no notes or lacks the columns {', '.join(missing or need)}; expected "
                        "note_str,instrument_family_str,instrument_source_str,pitch,velocity.")
    meta = {}
    for line, row in enumerate(rows, start=2):
        note, fam = str(row["note_str"]), row["instrument_family_str"]
        src = row.get("instrument_source_str", "acoustic")
        where = f"{path} line {line}: note {note}"
        schema.require_fields(row, ("instrument_family_str", "pitch", "velocity"), where)   # empty cells
        if fam not in NSYNTH_FAMILY_NAMES:
            raise schema.family_error(where, fam, key="instrument_family_str")
        if src not in NSYNTH_SOURCE_NAMES:
            raise DataError(f"{where}: instrument_source_str {src!r} is not an NSynth source "
                            f"({', '.join(NSYNTH_SOURCE_NAMES)}).")
        try:
            pitch, velocity = int(row["pitch"]), int(row["velocity"])
        except (TypeError, ValueError):
            raise DataError(f"{where}: pitch {row['pitch']!r} / velocity {row['velocity']!r} are not whole "
                            "numbers (MIDI 0..127).") from None
        meta[note] = {
            "note_str": note, "instrument_str": note.rsplit("-", 2)[0], "pitch": pitch,
            "velocity": velocity, "sample_rate": AUDIO.sample_rate_hz,
            "instrument_family": NSYNTH_FAMILY_NAMES.index(fam), "instrument_family_str": fam,
            "instrument_source": NSYNTH_SOURCE_NAMES.index(src), "instrument_source_str": src,
            "note": 0, "instrument": 0, "qualities": [0] * len(NSYNTH_QUALITY_NAMES)}      # not in notes.csv
    return meta


def read_examples_json(folder: str) -> dict:
    path = os.path.join(folder, "examples.json")
    if not os.path.isfile(path) and os.path.isfile(os.path.join(folder, "notes.csv")):
        return _read_notes_csv(os.path.join(folder, "notes.csv"))
    try:
        with open(path) as fh:
            meta = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}). Re-extract the NSynth JSON+wav archive.") from None
    if not isinstance(meta, dict) or not meta:
        raise DataError(f"{path} holds no notes: expected an object mapping note_str to its metadata.")
    return meta


def jsonwav_listing(folder: str) -> tuple[str, dict, list[str | None]]:
    """``(listing, meta, notes)`` of a JSON+wav folder: the file that lists its notes (examples.json or
    notes.csv), their metadata by note_str, and every note_str in sorted order (``None`` for synth_lead notes,
    which readers drop). Each note's metadata is checked to be an object with an NSynth family, before any audio
    is read."""
    meta = read_examples_json(folder)
    listing = os.path.join(folder, "examples.json" if os.path.isfile(os.path.join(folder, "examples.json"))
                           else "notes.csv")
    notes = []
    for note_str in sorted(meta):
        m = meta[note_str]
        where = f"{listing}: note {note_str}"
        if not isinstance(m, dict):
            raise DataError(f"{where}: expected an object of NSynth metadata, found {type(m).__name__}.")
        notes.append(None if schema.check_family(m.get("instrument_family"), where) == SYNTH_LEAD_ID else note_str)
    return listing, meta, notes


def _jsonwav_order(notes: list[str | None], shuffle_seed=None) -> list[str]:
    """The note_strs to read, synth_lead dropped: sorted, or with ``shuffle_seed`` in the seeded permutation of
    all the notes (the order the reader has always used)."""
    if shuffle_seed is not None:
        notes = [notes[i] for i in np.random.default_rng(shuffle_seed).permutation(len(notes))]
    return [n for n in notes if n is not None]


def jsonwav_wav(folder: str, note_str: str) -> str:
    """The wav file of a listed note; a :class:`DataError` when it is missing."""
    wav = os.path.join(folder, "audio", f"{note_str}.wav")
    if not os.path.isfile(wav):
        raise DataError(f"{wav} is listed in examples.json but missing. Re-extract the archive.")
    return wav


def _jsonwav_element(folder: str, listing: str, meta: dict, note_str: str) -> dict:
    """One note's element (numpy): its wav decoded, its metadata checked."""
    wav = jsonwav_wav(folder, note_str)
    where = f"{listing}: note {note_str}"
    return metadata_element(meta[note_str], note_audio(wav, where), where=where)


def jsonwav_records(folder: str, shuffle_seed=None) -> Iterator[dict]:
    """Elements (numpy) from an NSynth JSON+wav folder, synth_lead dropped: in note_str order (deterministic,
    for evaluation) or, with ``shuffle_seed`` (an int or a sequence of ints), in a seeded random order. The
    note_str order is sorted by family, so training needs the shuffled order (the metadata is in memory, so
    shuffling the note list costs nothing). One note at a time in this thread; :func:`jsonwav_dataset` reads
    the same notes in the same order, in parallel."""
    listing, meta, notes = jsonwav_listing(folder)
    for note_str in _jsonwav_order(notes, shuffle_seed):
        yield _jsonwav_element(folder, listing, meta, note_str)


def jsonwav_dataset(folder: str, shuffle_seed: int | None = None):
    """The JSON+wav layout as a tf.data.Dataset with the same element structure as the TFRecord reader.

    Without ``shuffle_seed``: note_str order (evaluation). With it (training): a new seeded permutation of the
    notes on every pass over the dataset (epoch ``k`` uses seed ``[shuffle_seed, k]``), so family-sorted
    folders come out mixed even through a small shuffle buffer. The notes are listed (and their metadata
    checked) when the dataset is made; their wavs are decoded in parallel (``num_parallel_calls``: libsndfile
    and the file reads release the GIL) and come out in the listed order, the order of :func:`jsonwav_records`.
    A missing or bad wav raises its :class:`DataError` (wrapped by tf.data; :func:`iterate` unwraps it)."""
    tf = tensorflow()
    listing, meta, notes = jsonwav_listing(folder)
    names_sig = tf.TensorSpec([None], tf.string)
    if shuffle_seed is None:
        order = [n.encode() for n in _jsonwav_order(notes)]
        names = tf.data.Dataset.from_tensors(tf.constant(order, tf.string, shape=[len(order)]))
    else:
        epochs = itertools.count()      # the generator is called again on every pass: one permutation per epoch
        names = tf.data.Dataset.from_generator(
            lambda: iter([np.array([n.encode() for n in _jsonwav_order(notes, [int(shuffle_seed), next(epochs)])],
                                   dtype=object)]), output_signature=names_sig)
    sig = element_signature()
    keys = list(sig)

    def load(name):
        e = _jsonwav_element(folder, listing, meta, name.decode())
        return [np.asarray(e[k], sig[k].dtype.as_numpy_dtype) for k in keys]

    def decode(name):
        values = tf.numpy_function(load, [name], [sig[k].dtype for k in keys], stateful=False)
        for k, v in zip(keys, values):
            v.set_shape(sig[k].shape)
        return dict(zip(keys, values))
    return names.unbatch().map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def nsynth_dataset(path):
    """Unbatched elements from any supported source (see :func:`resolve_source`)."""
    kind, files = resolve_source(path)
    if kind == "jsonwav":
        return jsonwav_dataset(files[0])
    return tfrecord_dataset(files)


AUDIO_SUFFIXES = (".wav", ".wave", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff", ".m4a")
_AUDIO_MAGIC = (b"RIFF", b"RF64", b"fLaC", b"OggS", b"ID3", b"FORM")


def _files_of(source) -> list[str]:
    """The files a data source names (for diagnosing an error; [] when it cannot be resolved)."""
    try:
        return resolve_source(source)[1] if isinstance(source, (str, os.PathLike)) else []
    except DataError:
        return []


def _head(path: str, n: int) -> bytes | None:
    """The first ``n`` bytes of a file (None when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n)
    except OSError:
        return None


def _looks_like_audio(path: str) -> bool:
    head = _head(path, 12) or b""
    return path.lower().endswith(AUDIO_SUFFIXES) or head.startswith(_AUDIO_MAGIC) or head[4:8] == b"ftyp"


def _tf_detail(msg: str) -> str:
    """TensorFlow's error text without its op/iterator plumbing (kept short for a one-line message)."""
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
    msg = re.sub(r"Error in user-defined function passed to \S+ transformation with iterator: \S+:\s*", "", msg)
    msg = re.sub(r"\s*\[\[\{\{node [^]]*\]\]|\s*\[Op:\w+\].*$", "", msg, flags=re.S)
    return " ".join(msg.split())[:300]


def translate_tf_error(err: Exception, source) -> DataError:
    """Turn TensorFlow's low-level read/parse errors into a DataError that says what to do.

    The whole message is searched (the specific causes come late in it) before it is cut for display; the notes
    every reader rejects get :func:`schema.error_from_tf`'s messages; when the bytes themselves cannot be read, the
    files are looked at to tell audio files (which downloading again would not fix) from damaged TFRecords."""
    full = str(err).strip()
    msg = _tf_detail(full) if full else type(err).__name__
    lower = full.lower()
    contract = schema.error_from_tf(full, source)     # a note every reader rejects, with the same message
    if contract is not None:
        return contract
    if "corrupted record" in lower or "DataLoss" in type(err).__name__ or "truncated" in lower \
            or "inflate" in lower:
        files = _files_of(source)
        audio = [f for f in files if _looks_like_audio(f)]
        if audio:
            what = ("this is an audio file" if audio == [os.fspath(source)]
                    else f"{len(audio)} of its {len(files)} files are audio files (e.g. {audio[0]})")
            return DataError(f"{source}: {what}, not NSynth data; use `python -m nsynth_cnn "
                             f"predict FILE` to classify recordings, or pass an NSynth TFRecord/JSON+wav folder "
                             "as --data.")
        return DataError(f"{source}: a TFRecord is corrupt or truncated ({msg}). Download that file again "
                         "(compare its size/checksum with the original).")
    return DataError(f"{source}: cannot read this as NSynth data ({msg}). Is it an NSynth TFRecord "
                     "(tf.train.Example with the NSynth schema) or a JSON+wav folder?")


def iterate(ds, source) -> Iterator[Any]:
    """Iterate a dataset as numpy, turning TensorFlow read errors into :class:`DataError`."""
    tf = tensorflow()
    it = iter(ds.as_numpy_iterator())
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
            # A DataError raised inside a Python generator (JSON+wav reader) reaches us wrapped by tf.data.
            wrapped = re.search(r"DataError: (.+)", str(err))
            if wrapped is not None:
                raise DataError(wrapped.group(1).strip()) from None
            if isinstance(err, tf.errors.UnknownError):
                raise
            raise translate_tf_error(err, source) from None


def load_arrays(path, limit: int | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """All notes of a (small) source as ``(audio[n, 64000], meta)``; meta holds numpy columns."""
    ds = nsynth_dataset(path)
    if limit:
        ds = ds.take(limit)
    rows = list(iterate(ds, path))
    if not rows:
        raise DataError(f"{path}: no notes left after dropping synth_lead; nothing to use.")
    audio = np.stack([r.pop("audio") for r in rows])
    meta = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    for k in STR_FEATURES:
        meta[k] = np.array([s.decode() for s in meta[k]])
    return audio, meta
