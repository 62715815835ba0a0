"""prepare: family-ordered NSynth TFRecord -> shuffled int16 shards that every reader takes transparently."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from conftest import N, make_notes, run_cli
from nsynth_cnn import batches, data, prepare, schema, shards, writers
from nsynth_cnn.params import nsynth_family_to_label

QUANT = 1.0 / 32768   # one step of 16-bit PCM
PER_FAMILY = 6        # 66 notes, 6 of them synth_lead (dropped)


@pytest.fixture(scope="module")
def ordered_notes():
    return make_notes(per_family=PER_FAMILY)          # ordered by family, like the official train file


@pytest.fixture(scope="module")
def ordered_file(tmp_path_factory, ordered_notes):
    path = tmp_path_factory.mktemp("ordered") / "nsynth-train.tfrecord"
    writers.write_tfrecord(str(path), ordered_notes)
    return path


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory, ordered_file):
    out = tmp_path_factory.mktemp("prep") / "prepared"
    stats = prepare.prepare(ordered_file, str(out), shards=4, seed=0, log=None)
    assert stats["notes"] == 60 and stats["shards"] == 4     # synth_lead not copied
    return out


def kept(notes):
    return {m["note_str"]: (m, a) for m, a in notes if m["instrument_family"] != 9}


def test_round_trip_same_notes_audio_within_quantisation(prepared_dir, ordered_notes):
    kind, files = data.resolve_source(prepared_dir)
    assert kind == "tfrecord" and len(files) == 4 and data.record_parser(files) is shards.parse_prepared
    audio, meta = data.load_arrays(prepared_dir)
    want = kept(ordered_notes)
    assert audio.shape == (60, N) and audio.dtype == np.float32
    assert sorted(meta["note_str"]) == sorted(want)
    for i, s in enumerate(meta["note_str"]):
        m, a = want[s]
        assert np.max(np.abs(audio[i] - a)) <= 0.5 * QUANT + 1e-7
        assert meta["pitch"][i] == m["pitch"] and meta["velocity"][i] == m["velocity"]
        assert meta["instrument_str"][i] == m["instrument_str"] and meta["label"][i] == \
            nsynth_family_to_label(m["instrument_family"])
        np.testing.assert_array_equal(meta["qualities"][i], m["qualities"])


def test_same_element_structure_as_nsynth_reader(prepared_dir, ordered_file):
    raw = data.nsynth_dataset(ordered_file).element_spec
    prep = data.nsynth_dataset(prepared_dir).element_spec
    assert raw == prep


def test_stats_and_label_counts(prepared_dir):
    with open(prepared_dir / "stats.json") as fh:
        stats = json.load(fh)
    assert stats["label_counts"] == [PER_FAMILY] * 10 and sum(stats["shard_notes"]) == 60
    np.testing.assert_array_equal(batches.label_counts(prepared_dir), np.full(10, PER_FAMILY))
    with open(prepared_dir / "prepared.json") as fh:
        marker = json.load(fh)
    assert marker["format"] == shards.FORMAT and len(marker["files"]) == 4
    # int16: about half the bytes of the float32 source per note
    per_note = sum(os.path.getsize(f) for f in data.resolve_source(prepared_dir)[1]) / 60
    assert per_note < 2 * N + 1024


def test_first_batch_mixes_classes(prepared_dir, ordered_file):
    def classes(path):
        ds = batches.training_dataset(path, batch_size=16, shuffle_buffer=0, seed=0)
        _, labels = next(iter(data.iterate(ds, path)))
        return len(set(labels.tolist()))
    assert classes(ordered_file) <= 3          # family-ordered: 16 notes span 3 families
    assert classes(prepared_dir) >= 6          # shuffled shards, no shuffle buffer at all
    ds = batches.training_dataset(prepared_dir, batch_size=16, shuffle_buffer=8, seed=0)
    assert sum(len(b[1]) for b in data.iterate(ds, prepared_dir)) == 60


def test_quantize_bounds():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0, 1.5, 1e-6], np.float32)
    q = shards.quantize(x)
    assert q.dtype == np.dtype("<i2") and q[3] == 32767 and q[4] == -32768 and q[5] == 32767
    err = np.abs(shards.dequantize(q) - np.clip(x, -1, 32767 / 32768))
    assert err.max() <= 0.5 * QUANT + 1e-9


def test_seeded_and_guarded(tmp_path, ordered_file, prepared_dir):
    out = tmp_path / "again"
    prepare.prepare(ordered_file, str(out), shards=4, seed=0, log=None)
    for a, b in zip(data.resolve_source(out)[1], data.resolve_source(prepared_dir)[1]):
        with open(a, "rb") as fa, open(b, "rb") as fb:
            assert fa.read() == fb.read()                # same seed, same shards
    with pytest.raises(schema.DataError, match="overwrite"):
        prepare.prepare(ordered_file, str(out), shards=2, log=None)
    prepare.prepare(ordered_file, str(out), shards=2, seed=1, overwrite=True, log=None)
    assert len(data.resolve_source(out)[1]) == 2
    other = tmp_path / "busy"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(schema.DataError, match="other files"):
        prepare.prepare(ordered_file, str(other), shards=2, log=None)
    with pytest.raises(schema.DataError, match="shards"):
        prepare.prepare(ordered_file, str(tmp_path / "zero"), shards=0, log=None)


@pytest.mark.slow
def test_cli(tmp_path, ordered_file):
    out = tmp_path / "cli"
    res = run_cli("prepare", "--src", ordered_file, "--out", out, "--shards", "3", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "prepared 60 notes into 3 shards" in res.stdout
    assert len(data.resolve_source(out)[1]) == 3


@pytest.mark.parametrize("source", ["ordered_file", "prepared_dir"])
def test_lean_parse_gives_the_same_audio_and_labels(source, request):
    """Training parses only audio + family (schema.LEAN_FIELDS): same notes, audio and labels as the full parse."""
    path = request.getfixturevalue(source)
    files = data.resolve_source(path)[1]
    full = list(data.tfrecord_dataset(files).as_numpy_iterator())
    lean = list(data.tfrecord_dataset(files, fields=schema.LEAN_FIELDS).as_numpy_iterator())
    assert len(lean) == len(full) == 60 and set(lean[0]) == {"audio", "instrument_family", "label"}
    for a, b in zip(full, lean):
        np.testing.assert_array_equal(a["audio"], b["audio"])
        assert a["label"] == b["label"] and a["instrument_family"] == b["instrument_family"]


@pytest.mark.parametrize("which", ["raw", "prepared"])
def test_streamed_and_cached_training_input_agree(which, prepared_dir, ordered_file):
    """Uncached batches (prepared shards: serialized records shuffled, whole batches parsed at once; the raw
    file: element-wise, synth_lead dropped) hold the same notes as the cached path, in full batches."""
    path = prepared_dir if which == "prepared" else ordered_file
    got = {}
    for cache in (False, True):
        ds = batches.training_dataset(path, batch_size=16, shuffle_buffer=32, seed=3, cache=cache,
                                   class_weights=np.linspace(0.5, 1.4, 10))
        got[cache] = list(data.iterate(ds, path))
        assert [len(b[1]) for b in got[cache]] == [16, 16, 16, 12], (which, cache)
    def notes(bs):    # noqa: E306  (label, weight, audio checksum) of every note, order-free
        return sorted((int(y), round(float(w), 5), round(float(np.sum(a ** 2)), 2))
                      for b in bs for a, y, w in zip(*b))
    assert notes(got[False]) == notes(got[True])
    assert sorted(int(y) for b in got[False] for y in b[1]) == sorted(list(range(10)) * PER_FAMILY)
