"""Official NSynth layouts with no manual step (issue 23): family-ordered TFRecords converted once (reused,
resumable, disk space checked) by ``prepare.ensure_mixed``, JSON+wav training order shuffled, every official
split name found by ``splits.find_split``, and NSynth as TensorFlow Datasets stores it."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from conftest import N
from nsynth_cnn import batches, data, prepare, schema, shards, splits, writers
from nsynth_cnn.params import NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES, nsynth_family_to_label

FULL_TRAIN_NOTES = 289_205
BATCH = 64
SOURCES = {0: "electronic", 1: "acoustic", 2: "acoustic", 3: "acoustic", 4: "acoustic", 5: "acoustic",
           6: "electronic", 7: "acoustic", 8: "acoustic", 9: "synthetic", 10: "synthetic"}


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    """ensure_mixed keeps its locks (and read-only sources' copies) in the cache: not the real ~/.cache here."""
    monkeypatch.setenv(prepare.CACHE_ENV, str(tmp_path / "cache"))


def ordered_notes(per_family: int, families=range(11)):
    """``(meta, audio)`` pairs sorted by family like nsynth-train.tfrecord. The audio content does not matter:
    near-silence with the note's index in the first sample (cheap to write, checkable)."""
    k = 0
    for fam in families:
        for i in range(per_family):
            meta = writers.note_metadata(family=NSYNTH_FAMILY_NAMES[fam], source=SOURCES[fam], instrument=fam * 1000 + i,
                                      pitch=21 + i % 88, velocity=(25, 50, 75, 100, 127)[i % 5], note=k,
                                      instrument_str=f"{NSYNTH_FAMILY_NAMES[fam]}_{SOURCES[fam]}_{i:03d}",
                                      qualities=[(i >> b) & 1 for b in range(10)])
            audio = np.zeros(N, np.float32)
            audio[0] = k / 32768.0
            k += 1
            yield meta, audio


def shuffle_buffer_for(n: int) -> int:
    """The 4,096-note buffer scaled to this file as it relates to the full train split."""
    return max(1, round(4096 * n / FULL_TRAIN_NOTES))


def note_strs(path) -> list[str]:
    return [e["note_str"].decode() for e in data.iterate(data.nsynth_dataset(path).map(
        lambda e: {"note_str": e["note_str"]}), path)]


def mtimes(folder) -> dict:
    return {f: os.stat(os.path.join(folder, f)).st_mtime_ns for f in sorted(os.listdir(folder))}


# ----------------------------------------------------------------------------------------------- big ordered file
PER_FAMILY_BIG = 220             # 10 families x 220 = 2,200 notes (+ 20 synth_lead, dropped)
KEPT_BIG = 10 * PER_FAMILY_BIG


@pytest.fixture(scope="module")
def big_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    notes = list(ordered_notes(PER_FAMILY_BIG, families=[*range(9), 10]))
    notes[1000:1000] = list(ordered_notes(2, families=[9]))      # synth_lead amid the others
    assert writers.write_tfrecord(str(folder / "nsynth-train.tfrecord"), notes) == KEPT_BIG + 2
    yield folder
    shutil.rmtree(folder, ignore_errors=True)                     # ~0.9 GB: not kept by pytest's tmp retention


@pytest.fixture(scope="module")
def big_mixed(big_dir):
    src = str(big_dir / "nsynth-train.tfrecord")
    out = prepare.ensure_mixed(src, seed=0, log=None, chunk_notes=512)
    return src, out


def test_ensure_mixed_gives_mixed_batches_where_the_raw_file_does_not(big_mixed):
    src, out = big_mixed
    assert out == src + ".prepared" and os.path.isfile(os.path.join(out, "prepared.json"))
    buffer = shuffle_buffer_for(KEPT_BIG)
    raw = batches.families_per_batch(batches.training_dataset(src, batch_size=BATCH, shuffle_buffer=buffer, seed=0))
    mixed = batches.families_per_batch(batches.training_dataset(out, batch_size=BATCH, shuffle_buffer=buffer, seed=0))
    print(f"families per batch: raw {raw:.2f}, mixed {mixed:.2f}")
    assert raw <= 2.5, raw            # the test can fail: the file as it is gives 1-2 families per batch
    assert mixed >= 8, mixed
    np.testing.assert_array_equal(batches.label_counts(out), np.full(10, PER_FAMILY_BIG))   # from stats.json


def test_ensure_mixed_reuses_the_conversion(big_mixed):
    src, out = big_mixed
    before = mtimes(out)
    assert prepare.ensure_mixed(src, log=None) == out
    assert mtimes(out) == before                                       # nothing rewritten
    # the data folder, as find_split sees it, still gives the original file (the .prepared folder is no split)
    assert splits.find_split(os.path.dirname(src), "train") == src


# ----------------------------------------------------------------------------------------------- small sources
PER_FAMILY_SMALL = 30


@pytest.fixture()
def small_src(tmp_path):
    src = tmp_path / "data" / "nsynth-train.tfrecord"
    src.parent.mkdir()
    writers.write_tfrecord(str(src), ordered_notes(PER_FAMILY_SMALL))
    return str(src)


def expected_small() -> list[str]:
    return sorted(m["note_str"] for m, _ in ordered_notes(PER_FAMILY_SMALL) if m["instrument_family"] != 9)


def test_interrupted_pass_1_resumes_with_each_note_once(small_src, monkeypatch, tmp_path):
    real = prepare._source_elements
    skips = []

    def failing(src, skip=0):
        skips.append(skip)
        for i, pair in enumerate(real(src, skip)):
            if i == 150:
                raise KeyboardInterrupt("simulated Ctrl-C in the third chunk")
            yield pair

    monkeypatch.setattr(prepare, "_source_elements", failing)
    with pytest.raises(KeyboardInterrupt):
        prepare.ensure_mixed(small_src, shards=3, chunk_notes=64, log=None)
    out = small_src + ".prepared"
    with open(os.path.join(out, ".prepare-tmp", "progress.json")) as fh:
        state = json.load(fh)
    assert state["chunks_done"] == 2 and state["consumed"] == 128 and not state["pass1_done"]
    assert not os.path.exists(os.path.join(out, "prepared.json"))

    def recording(src, skip=0):
        skips.append(skip)
        yield from real(src, skip)

    monkeypatch.setattr(prepare, "_source_elements", recording)
    assert prepare.ensure_mixed(small_src, shards=3, chunk_notes=64, log=None) == out
    assert skips == [0, 128]                                           # the done chunks were not read again
    got = note_strs(out)
    assert sorted(got) == expected_small() and len(set(got)) == len(got)
    assert not os.path.exists(os.path.join(out, ".prepare-tmp"))
    # the same shards, byte for byte, as a run that was never interrupted
    clean = tmp_path / "clean"
    prepare.prepare(small_src, str(clean), shards=3, chunk_notes=64, log=None)
    for f in sorted(os.listdir(clean)):
        if f.endswith(".tfrecord"):
            assert (clean / f).read_bytes() == open(os.path.join(out, f), "rb").read(), f


def test_interrupted_pass_2_keeps_the_shards_already_written(small_src, monkeypatch):
    real = prepare._shuffle_one
    calls = []

    def failing(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise OSError("simulated crash while writing the second shard")
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare, "_shuffle_one", failing)
    with pytest.raises(OSError):
        prepare.ensure_mixed(small_src, shards=3, chunk_notes=64, log=None)
    out = small_src + ".prepared"
    first = os.path.join(out, shards.SHARD_PATTERN.format(0, 3))
    written = os.stat(first).st_mtime_ns
    monkeypatch.setattr(prepare, "_shuffle_one", real)
    prepare.ensure_mixed(small_src, shards=3, chunk_notes=64, log=None)
    assert os.stat(first).st_mtime_ns == written                       # shard 0 was not written again
    assert sorted(note_strs(out)) == expected_small()


def test_disk_space_checked_first(small_src, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - 10 ** 6,
                                                                                    10 ** 6))
    with pytest.raises(schema.DataError, match=r"Not enough disk space.*needs about [0-9.]+ GB free in .*prepared"):
        prepare.ensure_mixed(small_src, log=None)
    assert not os.path.exists(small_src + ".prepared")                 # nothing written


def test_changed_source_is_converted_again_and_read_only_folder_uses_the_cache(small_src, monkeypatch, tmp_path):
    out = prepare.ensure_mixed(small_src, shards=2, log=None)
    assert out == small_src + ".prepared"
    writers.write_tfrecord(small_src, ordered_notes(PER_FAMILY_SMALL, families=range(5)))   # new content
    assert prepare.ensure_mixed(small_src, shards=2, log=None) == out
    assert sorted(note_strs(out)) == sorted(m["note_str"] for m, _ in ordered_notes(PER_FAMILY_SMALL, range(5)))
    # data folder not writable: the copy goes to $NSYNTH_CNN_CACHE
    shutil.rmtree(out)
    data_dir = os.path.dirname(small_src)
    monkeypatch.setenv(prepare.CACHE_ENV, str(tmp_path / "cache"))
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(data_dir)
                        else real_access(p, mode, **kw))
    cached = prepare.ensure_mixed(small_src, shards=2, log=None)
    assert cached.startswith(str(tmp_path / "cache")) and not os.path.exists(out)
    assert prepare.ensure_mixed(small_src, log=None) == cached


def test_sources_that_are_already_mixed_are_used_as_they_are(tmp_path, small_src):
    many = tmp_path / "train"                                          # this project's corpus: 16 shards
    many.mkdir()
    notes = list(ordered_notes(2, families=range(8)))
    for s in range(16):
        writers.write_tfrecord(str(many / f"nsynth-train-{s:05d}-of-00016.tfrecord"), [notes[s]])
    assert prepare.ensure_mixed(str(many), log=None) == str(many)
    folder = tmp_path / "nsynth-train"
    writers.write_jsonwav(str(folder), ordered_notes(1, families=range(3)))
    assert prepare.ensure_mixed(str(folder), log=None) == str(folder)
    out = prepare.ensure_mixed(small_src, shards=2, log=None)
    assert prepare.ensure_mixed(out, log=None) == out                 # prepared shards


# ----------------------------------------------------------------------------------------------- JSON+wav order
def test_jsonwav_training_order_mixed_evaluation_order_sorted(tmp_path):
    folder = tmp_path / "nsynth-train"
    writers.write_jsonwav(str(folder), ordered_notes(4, families=range(11)))
    names = sorted(m["note_str"] for m, _ in ordered_notes(4, families=range(11)) if m["instrument_family"] != 9)
    assert [e["note_str"].decode() for e in data.jsonwav_records(str(folder))] == names
    assert note_strs(folder) == names                                  # evaluation: note_str order, every time
    a = [e["note_str"].decode() for e in data.jsonwav_records(str(folder), shuffle_seed=0)]
    b = [e["note_str"].decode() for e in data.jsonwav_records(str(folder), shuffle_seed=0)]
    assert a == b and a != names and sorted(a) == names                # seeded permutation
    ds = data.jsonwav_dataset(str(folder), shuffle_seed=0).map(lambda e: e["note_str"])
    epochs = [list(data.iterate(ds, folder)) for _ in range(2)]
    assert epochs[0] != epochs[1] and sorted(epochs[0]) == sorted(epochs[1])   # a new order each epoch
    ordered = str(tmp_path / "ordered.tfrecord")
    writers.write_tfrecord(ordered, ordered_notes(4, families=range(11)))
    sorted_fpb = batches.families_per_batch(batches.training_dataset(ordered, batch_size=8, shuffle_buffer=1, seed=0))
    mixed_fpb = batches.families_per_batch(batches.training_dataset(str(folder), batch_size=8, shuffle_buffer=1, seed=0))
    assert sorted_fpb <= 2.5 and mixed_fpb >= 4, (sorted_fpb, mixed_fpb)


def test_families_per_batch_takes_int_and_one_hot_labels():
    tf = schema.tensorflow()
    x = np.zeros((40, 3), np.float32)
    y = np.repeat(np.arange(10), 4)
    assert batches.families_per_batch(tf.data.Dataset.from_tensor_slices((x, y)).batch(8), batches=5) == 2.0
    onehot = np.eye(10, dtype=np.float32)[y] * 0.9 + 0.01
    w = np.ones(40, np.float32)
    ds = tf.data.Dataset.from_tensor_slices((x, onehot, w)).shuffle(40, seed=1).batch(20)
    assert batches.families_per_batch(ds, batches=1) > 5
    with pytest.raises(schema.DataError):
        batches.families_per_batch(ds.take(0))


# ----------------------------------------------------------------------------------------------- split names
def touch(path, content=b"x"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(content)
    return str(path)


@pytest.mark.parametrize("layout,want", [
    ("nsynth-train.tfrecord", "nsynth-train.tfrecord"),
    ("nsynth-train.tfrecord.gz", "nsynth-train.tfrecord.gz"),
    ("nsynth-train.tfrecord-00000-of-00016", "nsynth-train.tfrecord-*"),
    ("nsynth-train-00003-of-00016.tfrecord", "nsynth-train-*.tfrecord*"),
    ("nsynth-train/examples.json", "nsynth-train"),
    ("train/nsynth-train-00000-of-00016.tfrecord", "train"),
    ("train/jsonwav/examples.json", os.path.join("train", "jsonwav")),
    ("nsynth/full/2.3.3/nsynth-train.tfrecord-00000-of-00512", os.path.join("nsynth", "full", "2.3.3",
                                                                             "nsynth-train.tfrecord-*")),
])
def test_find_split_official_names(tmp_path, layout, want):
    touch(tmp_path / layout, b"{}" if layout.endswith(".json") else b"x")
    if layout.endswith("examples.json"):
        os.makedirs(tmp_path / os.path.dirname(layout) / "audio")
    assert splits.find_split(tmp_path, "train") == str(tmp_path / want)
    assert splits.find_split(tmp_path, "valid") is None
    found = splits.find_split(tmp_path, "train")
    assert data.resolve_source(found)[0] in ("tfrecord", "jsonwav")


def test_find_split_tfds_data_dir_variants(tmp_path):
    for version in ("2.3.0", "2.3.3", "1.1.0"):
        touch(tmp_path / "nsynth" / "full" / version / "nsynth-valid.tfrecord-00000-of-00002")
    newest = tmp_path / "nsynth" / "full" / "2.3.3"
    for base in (tmp_path, tmp_path / "nsynth", tmp_path / "nsynth" / "full", newest):
        assert splits.find_split(base, "valid") == str(newest / "nsynth-valid.tfrecord-*"), base
    with pytest.raises(schema.DataError, match="TFDS"):
        splits.training_splits(tmp_path)


# ----------------------------------------------------------------------------------------------- TFDS schema
def test_tfds_format_reads_into_the_same_elements(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    builder = tfds.builder_cls("nsynth")(data_dir=str(tmp_path / "tfds"), config="full")
    features = builder.info.features
    notes = list(ordered_notes(3, families=range(11)))
    version_dir = tmp_path / "tfds" / "nsynth" / "full" / str(builder.version)
    os.makedirs(version_dir)
    tf = schema.tensorflow()
    for s in range(2):
        with tf.io.TFRecordWriter(str(version_dir / f"nsynth-train.tfrecord-{s:05d}-of-00002")) as w:
            for meta, audio in notes[s::2]:
                w.write(features.serialize_example({
                    "id": meta["note_str"], "audio": audio, "pitch": meta["pitch"], "velocity": meta["velocity"],
                    "instrument": {"label": meta["instrument"] % 1006, "family": meta["instrument_family_str"],
                                   "source": meta["instrument_source_str"]},
                    "qualities": {q: bool(v) for q, v in zip(NSYNTH_QUALITY_NAMES, meta["qualities"])}}))
    found = splits.find_split(tmp_path / "tfds", "train")
    assert found == str(version_dir / "nsynth-train.tfrecord-*")
    want = {m["note_str"]: (m, a) for m, a in notes if m["instrument_family"] != 9}
    for case in ("by-records", "by-features.json"):
        if case == "by-features.json":
            features.save_config(str(version_dir))
            assert os.path.isfile(version_dir / "features.json")
        audio, meta = data.load_arrays(found)
        assert sorted(meta["note_str"]) == sorted(want)
        for i, s in enumerate(meta["note_str"]):
            m, a = want[s]
            np.testing.assert_array_equal(audio[i], a)
            for k in ("pitch", "velocity", "instrument_family", "instrument_source", "instrument_str",
                      "instrument_family_str", "instrument_source_str"):
                assert meta[k][i] == m[k], (k, meta[k][i], m[k])
            np.testing.assert_array_equal(meta["qualities"][i], m["qualities"])
            assert meta["label"][i] == nsynth_family_to_label(m["instrument_family"])
    official = str(tmp_path / "official.tfrecord")
    writers.write_tfrecord(official, notes[:3])
    assert data.nsynth_dataset(found).element_spec == data.nsynth_dataset(official).element_spec
    assert prepare.ensure_mixed(found, log=None) == found              # TFDS shuffles the notes it writes
    out = str(tmp_path / "prepared")
    prepare.prepare(found, out, shards=2, log=None)                    # converting it reads the TFDS schema too
    assert sorted(note_strs(out)) == sorted(want)
    x, y = next(iter(batches.training_dataset(out, batch_size=8, shuffle_buffer=0, seed=0)))
    assert x.shape == (8, N)


# ----------------------------------------------------------------------------------------------- train mode, end to end
@pytest.mark.slow
def test_cli_trains_on_the_family_ordered_file_at_official_proportions(big_dir, tmp_path, capsys):
    """``python -m nsynth_cnn train`` on the official-style single file, shuffle buffer 4096 N / 289,205: the train
    path converts it and the first batches mix the families (recorded in the history)."""
    from nsynth_cnn.__main__ import main
    out = tmp_path / "w"
    rc = main(["train", "--model", "logmel", "--train", str(big_dir / "nsynth-train.tfrecord"), "--out", str(out),
               "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", str(BATCH),
               "--shuffle-buffer", str(shuffle_buffer_for(KEPT_BIG)), "--xla", "off"])
    assert rc == 0, capsys.readouterr().err
    meta = json.loads((out / "logmel_cnn_history.json").read_text())["meta"]
    assert meta["families_per_batch"] >= 8
    assert meta["read_from"].endswith(".prepared") and meta["train_data"].endswith("nsynth-train.tfrecord")
    assert sum(meta["train_notes_per_family"].values()) == KEPT_BIG


def test_training_refuses_batches_of_one_family(big_dir, tmp_path, capsys, monkeypatch):
    """Were the file read as it is (no conversion), the first batches would hold 1-2 families: training stops
    with a message that says what to do, and writes no weights."""
    from nsynth_cnn.__main__ import main
    monkeypatch.setattr(prepare, "ensure_mixed", lambda path, **kw: path)
    out = tmp_path / "w"
    rc = main(["train", "--model", "logmel", "--train", str(big_dir / "nsynth-train.tfrecord"), "--out", str(out),
               "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", str(BATCH),
               "--shuffle-buffer", str(shuffle_buffer_for(KEPT_BIG)), "--xla", "off"])
    err = capsys.readouterr().err
    assert rc == 2 and "ordered by family" in err and "prepare" in err
    assert not (out / "logmel_cnn.keras").exists()


@pytest.mark.slow
def test_notebook_train_mode_converts_the_official_file(big_dir, tmp_path):
    """The notebook's MODE = "train" on a DATA_DIR holding nsynth-train.tfrecord: the recipe runs (1 epoch per
    stage) into OUT_DIR/weights, every stage reads the converted shards with mixed batches, the report shows only
    numbers of the networks it trained (saved beside them), and the shipped weights/ and figures/ are untouched."""
    import hashlib

    import papermill
    from conftest import ROOT

    def digests(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}
    shipped_before = {d: digests(ROOT / d) for d in ("weights", "figures")}
    out = tmp_path / "run"
    weights = out / "weights"
    test_split = big_dir / "nsynth-test.tfrecord"
    writers.write_tfrecord(str(test_split), ordered_notes(2, families=[*range(9), 10]))
    try:
        nb = papermill.execute_notebook(
            str(ROOT / "project1.ipynb"), str(tmp_path / "out.ipynb"), cwd=str(ROOT), kernel_name="python3",
            parameters={"MODE": "train", "DATA_DIR": str(big_dir), "OUT_DIR": str(out), "EPOCHS": 1},
            progress_bar=False, execution_timeout=900)
    finally:
        test_split.unlink()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    for name in ("logmel", "waveform"):
        meta = json.loads((weights / f"{name}_cnn_history.json").read_text())["meta"]
        assert meta["families_per_batch"] >= 8 and meta["read_from"].endswith(".prepared"), name
        assert meta["stage"]["model"] == name and meta["params"]["epochs"] == 1
    assert not (weights / ".waveform-base").exists()           # the intermediate network is gone
    # the waveform CNN's history keeps its first stage, so the learning curves show both
    assert len(json.loads((weights / "waveform_cnn_history.json").read_text())["earlier_stages"]) == 1
    saved = json.loads((weights / "evaluation_notebook.json").read_text())
    assert set(saved) == {"logmel", "waveform"} and saved["logmel"]["data"].startswith(str(big_dir))
    text = "\n".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                     + str(o.get("data", {}).get("text/plain", "")) for o in outputs)
    assert "This run trained both networks" in text
    for shipped_claim in ("rendered corpus", "never heard a real NSynth", "real NSynth notes"):
        assert shipped_claim not in text, shipped_claim              # nothing said of the shipped weights
    assert f"{saved['logmel']['accuracy']:.3f}" in text
    assert (out / "figures" / "learning_curves.png").is_file()
    assert {d: digests(ROOT / d) for d in ("weights", "figures")} == shipped_before
