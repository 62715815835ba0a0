"""Which files are which NSynth split: the one place that decides what is trained on, validated on and evaluated.

NSynth names its files by split (``nsynth-train.tfrecord``, ``nsynth-valid.tfrecord``, ``nsynth-test.tfrecord``,
their ``.gz`` and sharded variants, the JSON+wav folders ``nsynth-train/`` ...). A user who downloads all three
into one folder and passes that folder must get the train split for training and the valid split for validation,
never the test split: :func:`select_split` picks files by those names and refuses a folder it cannot read
unambiguously. :func:`find_split` finds a split inside a data folder (the notebook's ``DATA_DIR``).
"""
from __future__ import annotations

import glob
import os
import re

from . import data
from .schema import DataError

SPLITS = ("train", "valid", "test")
SAMPLE_DIR = os.path.join("data", "nsynth-sample")
"""NSynth-format sample shipped in the repository (JSON+wav layout), evaluated when ``DATA_DIR`` is left at its
default and holds no NSynth split."""
DEFAULT_DATA_DIR = "data"
_SPLIT_NAME = re.compile(r"^nsynth-(train|valid|test)(?=[.\-_]|$)")


def split_of_name(path: str | os.PathLike) -> str | None:
    """The NSynth split a file or folder name says it holds (``nsynth-test.tfrecord`` -> "test"), else None."""
    m = _SPLIT_NAME.match(os.path.basename(os.fspath(path).rstrip("/\\")))
    return m.group(1) if m else None


def select_split(path: str | os.PathLike, split: str) -> str:
    """The part of ``path`` that holds NSynth's ``split`` ("train" or "valid"), for training.

    - A folder of TFRecord files named by split (the official files side by side): only the ``nsynth-<split>*``
      files, returned as a glob. Files named for no split beside them make the folder ambiguous: an error.
    - A data folder that is not itself a source (``nsynth-train/``, ``train/``, TFDS ``nsynth/full/...`` inside):
      :func:`find_split`.
    - A file, glob or JSON+wav folder: used as it is, unless its name says it is another split.

    Training or validating on the test split is refused (:class:`DataError`), whatever the folder holds."""
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', not {split!r}: the test split is never trained on")
    text = os.fspath(path)
    if os.path.isdir(text) and not os.path.isfile(os.path.join(text, "examples.json")) \
            and not os.path.isfile(os.path.join(text, "notes.csv")):
        files = sorted(f for f in glob.glob(os.path.join(glob.escape(text), "*.tfrecord*")) if os.path.isfile(f))
        if not files:
            found = find_split(text, split)
            if found is None:
                raise DataError(f"{text!r} holds no NSynth {split} split (nsynth-{split}.tfrecord, nsynth-{split}-*"
                                f".tfrecord shards, nsynth-{split}/ or {split}/). Point --{split} at it.")
            return found
        named = {f: split_of_name(f) for f in files}
        if any(named.values()):
            unnamed = [os.path.basename(f) for f, s in named.items() if s is None]
            if unnamed:
                raise DataError(f"{text!r} mixes NSynth split files with files named for no split ({', '.join(unnamed[:3])}"
                                f"{' ...' if len(unnamed) > 3 else ''}): it is not clear which notes are {split} notes. "
                                f"Move them apart, or pass the {split} files themselves (e.g. {text}/nsynth-{split}*).")
            mine = [f for f, s in named.items() if s == split]
            if not mine:
                have = sorted({s for s in named.values()})
                raise DataError(f"{text!r} holds NSynth {', '.join(have)} files but no nsynth-{split}* file. "
                                f"Point --{split} at the {split} split.")
            return mine[0] if len(mine) == 1 else os.path.join(text, f"nsynth-{split}*.tfrecord*")
        _refuse_other_split(text, split)
        return text
    _refuse_other_split(text, split)
    return text


def _refuse_other_split(path: str, split: str) -> None:
    """A :class:`DataError` when ``path``'s name, or the files it names, say they are another split than ``split``."""
    names = {split_of_name(path)}
    if any(ch in path for ch in "*?["):
        names |= {split_of_name(f) for f in glob.glob(path)}
    names.discard(None)
    if names - {split}:
        other = sorted(names - {split})
        raise DataError(f"{path!r} is NSynth's {' and '.join(other)} split by its name, given as the {split} data. "
                        + ("The test split is never trained or validated on (it would inflate the test accuracy). "
                           if "test" in other else "") + f"Point --{split} at nsynth-{split} files.")


def find_split(data_dir: str | os.PathLike, split: str) -> str | None:
    """The NSynth ``split`` (train/valid/test) inside ``data_dir``, or None.

    Looks for, in order: ``nsynth-<split>.tfrecord`` (also ``.gz``), sharded TFRecords
    (``nsynth-<split>.tfrecord-00000-of-00016``, ``nsynth-<split>-*.tfrecord*``; returned as a glob), the official
    JSON+wav folder ``nsynth-<split>/`` (examples.json + audio/), this project's corpus layout ``<split>/``
    (TFRecord shards or ``<split>/jsonwav``), and NSynth as TensorFlow Datasets prepares it
    (``nsynth/full/<version>/nsynth-<split>.tfrecord-*``, newest version; ``data_dir`` may be the TFDS data dir,
    ``.../nsynth`` or ``.../nsynth/full``). ``data_dir`` may also *be* a TFRecord file or a JSON+wav folder; it
    is then used as the test split.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        return None
    if os.path.isfile(data_dir) or os.path.isfile(os.path.join(data_dir, "examples.json")):
        return data_dir if split == "test" else None
    for name in (f"nsynth-{split}.tfrecord", f"nsynth-{split}.tfrecord.gz"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    for pattern in (f"nsynth-{split}.tfrecord-*", f"nsynth-{split}-*.tfrecord*"):
        if any(os.path.isfile(f) for f in glob.glob(os.path.join(glob.escape(data_dir), pattern))):
            return os.path.join(data_dir, pattern)
    for folder in (f"nsynth-{split}", split, os.path.join(split, "jsonwav")):
        path = os.path.join(data_dir, folder)
        if os.path.isdir(path):
            try:
                data.resolve_source(path)
            except DataError:
                continue
            return path
    for version_dir in _tfds_version_dirs(data_dir):
        name = f"nsynth-{split}.tfrecord-*"
        if any(os.path.isfile(f) for f in glob.glob(os.path.join(glob.escape(version_dir), name))):
            return os.path.join(version_dir, name)
    return None


def _tfds_version_dirs(data_dir: str) -> list[str]:
    """``nsynth/full/<version>`` folders of a TFDS data dir (also given as ``.../nsynth`` or ``.../nsynth/full``),
    newest version first."""
    def version(path):
        parts = os.path.basename(path).split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None
    found = []
    for sub in (os.path.join("nsynth", "full"), "full", ""):
        base = glob.escape(os.path.join(data_dir, sub) if sub else data_dir)
        found += [d for d in glob.glob(os.path.join(base, "*")) if os.path.isdir(d) and version(d) is not None]
    return sorted(found, key=version, reverse=True)


def evaluation_source(data_dir, sample_dir: str = SAMPLE_DIR, default_dir: str = DEFAULT_DATA_DIR) -> tuple[str, str]:
    """``(path, sentence)``: the test split in ``data_dir``. The embedded sample stands in only when ``data_dir``
    is the default (``data``); a folder the user named that is missing or holds no test split is a
    :class:`DataError` (evaluating the sample instead would report numbers of other data)."""
    path = find_split(data_dir, "test")
    if path is not None:
        return path, f"the NSynth-format test split found at `{path}`"
    if os.path.normpath(os.fspath(data_dir)) != os.path.normpath(default_dir):
        what = "does not exist" if not os.path.exists(data_dir) else "holds no NSynth test split"
        raise DataError(f"DATA_DIR {os.fspath(data_dir)!r} {what}. Set DATA_DIR to the folder holding "
                        "nsynth-test.tfrecord (or the nsynth-test/ JSON+wav folder, or NSynth as TFDS stores it), "
                        f"or leave it at {default_dir!r} to run on the embedded sample.")
    if not os.path.exists(sample_dir):
        raise DataError(f"No NSynth test split in {data_dir!r} and no embedded sample at {sample_dir!r}. "
                        "Set DATA_DIR to a folder holding nsynth-test.tfrecord (or the nsynth-test/ "
                        "JSON+wav folder), or restore data/ from project1.zip.")
    return sample_dir, (f"the small sample embedded in the repository (`{sample_dir}`), because "
                        f"`{data_dir}` holds no NSynth test split")


def training_splits(data_dir) -> tuple[str, str | None]:
    """``(train, valid)`` paths for ``MODE = "train"``; valid may be None (then no early stopping)."""
    train_path = find_split(data_dir, "train")
    if train_path is None:
        raise DataError(f"MODE='train' needs NSynth training data: {data_dir!r} holds no nsynth-train."
                        "tfrecord(.gz), nsynth-train.tfrecord-* / nsynth-train-*.tfrecord shards, nsynth-train/ "
                        "folder, train/ split or TFDS nsynth/full/<version>/.")
    return train_path, find_split(data_dir, "valid")
