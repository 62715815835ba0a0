"""Data layer: NSynth schema round trip, label mapping, JSON+wav == TFRecord, and every bad input's DataError."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from conftest import N, ROOT, SR, shared_path, tone
from nsynth_cnn import batches, data, schema, writers
from nsynth_cnn.audio import load_audio
from nsynth_cnn.params import FAMILIES, NSYNTH_FAMILY_NAMES, NUM_CLASSES, label_to_nsynth_family, \
    nsynth_family_to_label

QUANT = 1.0 / 32768   # one step of 16-bit PCM


def kept(notes):
    """The notes a reader must return: everything but synth_lead (NSynth family 9)."""
    return [(m, a) for m, a in notes if m["instrument_family"] != 9]


def by_note_str(audio, meta):
    return {s: i for i, s in enumerate(meta["note_str"])}


# ----------------------------------------------------------------------------------------------- labels
def test_label_mapping_drops_synth_lead():
    assert [nsynth_family_to_label(i) for i in range(11)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, -1, 9]
    assert [label_to_nsynth_family(i) for i in range(10)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]
    assert NUM_CLASSES == 10 and "synth_lead" not in FAMILIES
    assert FAMILIES[9] == "vocal" and FAMILIES[0] == "bass"
    for i in range(11):
        if i != 9:
            assert FAMILIES[nsynth_family_to_label(i)] == NSYNTH_FAMILY_NAMES[i]
    for bad in (-1, 11, 42):
        with pytest.raises(ValueError):
            nsynth_family_to_label(bad)


# ----------------------------------------------------------------------------------------------- TFRecord
def test_tfrecord_round_trip_filters_synth_lead(tfrecord_file, notes):
    audio, meta = data.load_arrays(tfrecord_file)
    expect = kept(notes)
    assert len(notes) == 22 and len(expect) == 20
    assert audio.shape == (20, N) and audio.dtype == np.float32
    assert 9 not in set(meta["instrument_family"]) and "synth_lead" not in set(meta["instrument_family_str"])
    assert sorted(set(meta["label"])) == list(range(10))
    idx = by_note_str(audio, meta)
    assert set(idx) == {m["note_str"] for m, _ in expect}
    for m, a in expect:
        i = idx[m["note_str"]]
        np.testing.assert_array_equal(audio[i], a)          # float32 TFRecord audio is lossless
        for k in schema.META_KEYS:
            assert meta[k][i] == m[k], k
        np.testing.assert_array_equal(meta["qualities"][i], m["qualities"])
        assert meta["label"][i] == nsynth_family_to_label(m["instrument_family"])
        assert FAMILIES[meta["label"][i]] == m["instrument_family_str"]


def test_written_records_follow_official_nsynth_schema(tfrecord_file, notes):
    """Parse with the schema as published by Magenta (written out here, not taken from data.py)."""
    import tensorflow as tf
    spec = {
        "note": tf.io.FixedLenFeature([], tf.int64), "note_str": tf.io.FixedLenFeature([], tf.string),
        "instrument": tf.io.FixedLenFeature([], tf.int64),
        "instrument_str": tf.io.FixedLenFeature([], tf.string),
        "pitch": tf.io.FixedLenFeature([], tf.int64), "velocity": tf.io.FixedLenFeature([], tf.int64),
        "sample_rate": tf.io.FixedLenFeature([], tf.int64),
        "audio": tf.io.FixedLenFeature([64000], tf.float32),
        "qualities": tf.io.FixedLenFeature([10], tf.int64), "qualities_str": tf.io.VarLenFeature(tf.string),
        "instrument_family": tf.io.FixedLenFeature([], tf.int64),
        "instrument_family_str": tf.io.FixedLenFeature([], tf.string),
        "instrument_source": tf.io.FixedLenFeature([], tf.int64),
        "instrument_source_str": tf.io.FixedLenFeature([], tf.string),
    }
    raw = list(tf.data.TFRecordDataset(str(tfrecord_file)))
    assert len(raw) == len(notes)                       # synth_lead is written; only readers drop it
    ex = tf.train.Example.FromString(raw[0].numpy())
    assert set(ex.features.feature) == set(spec)
    for serialized, (m, a) in zip(raw, notes):
        e = tf.io.parse_single_example(serialized, spec)
        assert e["note_str"].numpy().decode() == m["note_str"]
        assert int(e["sample_rate"]) == SR
        assert e["instrument_str"].numpy().decode() == m["instrument_str"]
        assert m["note_str"] == f"{m['instrument_str']}-{m['pitch']:03d}-{m['velocity']:03d}"
        qstr = [s.decode() for s in tf.sparse.to_dense(e["qualities_str"]).numpy()]
        assert qstr == m["qualities_str"] and len(qstr) == sum(m["qualities"])
        np.testing.assert_array_equal(e["audio"].numpy(), a)


def test_reader_accepts_folder_glob_and_gzip(tmp_path, notes):
    import tensorflow as tf
    sub = kept(notes)[:6]
    folder = tmp_path / "shards"
    folder.mkdir()
    writers.write_tfrecord(str(folder / "a.tfrecord-00000-of-00002"), sub[:3])
    writers.write_tfrecord(str(folder / "a.tfrecord-00001-of-00002"), sub[3:])
    gz = tmp_path / "one.tfrecord.gz"
    with tf.io.TFRecordWriter(str(gz), options="GZIP") as w:
        for m, a in sub:
            w.write(writers.serialize_note(m, a))
    want = sorted(m["note_str"] for m, _ in sub)
    for src in (folder, str(folder / "*.tfrecord-*"), gz):
        audio, meta = data.load_arrays(src)
        assert sorted(meta["note_str"]) == want, src
    audio, meta = data.load_arrays(gz, limit=2)
    assert audio.shape == (2, N)


def test_training_dataset_batches_and_class_weights(tfrecord_file):
    counts = batches.label_counts(tfrecord_file)
    np.testing.assert_array_equal(counts, np.full(10, 2))
    uneven = np.array([10, 0, 5, 5, 0, 0, 0, 0, 0, 20])
    w = batches.balanced_class_weights(uneven)
    assert w[1] == 0 and w[9] < w[2] < w[0] * 2.1
    assert np.isclose((w * uneven).sum() / uneven.sum(), 1.0)    # average weight per note is 1
    np.testing.assert_allclose(w[uneven > 0] * uneven[uneven > 0], w[0] * 10)   # each class weighs the same
    weights = batches.balanced_class_weights(counts)
    ds = batches.training_dataset(tfrecord_file, batch_size=8, shuffle_buffer=32, seed=0, class_weights=weights)
    got = list(data.iterate(ds, tfrecord_file))
    assert [b[0].shape for b in got] == [(8, N), (8, N), (4, N)]
    labels = np.concatenate([b[1] for b in got])
    assert sorted(labels) == sorted(list(range(10)) * 2)
    np.testing.assert_allclose(np.concatenate([b[2] for b in got]), 1.0)


# ----------------------------------------------------------------------------------------------- JSON+wav
def test_jsonwav_reader_equals_tfrecord_reader(tfrecord_file, jsonwav_dir):
    a_tf, m_tf = data.load_arrays(tfrecord_file)
    a_js, m_js = data.load_arrays(jsonwav_dir)
    assert data.resolve_source(jsonwav_dir)[0] == "jsonwav"
    assert data.resolve_source(jsonwav_dir / "examples.json")[0] == "jsonwav"
    assert a_js.shape == a_tf.shape and a_js.dtype == np.float32
    assert set(m_js) == set(m_tf)
    i_tf, i_js = by_note_str(a_tf, m_tf), by_note_str(a_js, m_js)
    assert set(i_tf) == set(i_js)
    for s in i_tf:
        err = np.max(np.abs(a_tf[i_tf[s]] - a_js[i_js[s]]))
        assert err <= QUANT, f"{s}: wav differs from the float32 TFRecord by {err * 32768:.2f} LSB"
        for k in m_tf:
            np.testing.assert_array_equal(m_tf[k][i_tf[s]], m_js[k][i_js[s]], err_msg=f"{s}: {k}")


def test_both_readers_yield_the_same_element_structure(tfrecord_file, jsonwav_dir):
    spec_tf = data.nsynth_dataset(tfrecord_file).element_spec
    spec_js = data.nsynth_dataset(jsonwav_dir).element_spec
    assert set(spec_tf) == set(spec_js)
    for k in spec_tf:
        assert spec_tf[k].dtype == spec_js[k].dtype, k
        assert tuple(spec_tf[k].shape) == tuple(spec_js[k].shape), k
    assert tuple(spec_tf["audio"].shape) == (N,)


def test_jsonwav_label_counts_read_the_listing_without_decoding_audio(tmp_path, jsonwav_dir, notes, monkeypatch):
    """label_counts of a JSON+wav folder without stats.json: the families of examples.json (or notes.csv), synth_lead
    dropped; each wav is looked for (a missing one is the reader's error) but none is decoded."""
    def no_decoding(*args, **kwargs):
        raise AssertionError("label_counts decoded a wav")
    monkeypatch.setattr(data, "load_audio", no_decoding)
    monkeypatch.setattr(data, "note_audio", no_decoding, raising=False)
    monkeypatch.setattr(sf, "SoundFile", no_decoding)
    monkeypatch.setattr(sf, "read", no_decoding)
    want = np.bincount([nsynth_family_to_label(m["instrument_family"]) for m, _ in kept(notes)], minlength=NUM_CLASSES)
    assert not (jsonwav_dir / "stats.json").exists()
    np.testing.assert_array_equal(batches.label_counts(jsonwav_dir), want)
    sub = kept(notes)[::3]
    notes_csv_folder(tmp_path, jsonwav_dir, sub)
    np.testing.assert_array_equal(batches.label_counts(tmp_path), np.bincount(
        [nsynth_family_to_label(m["instrument_family"]) for m, _ in sub], minlength=NUM_CLASSES))
    os.remove(tmp_path / "audio" / f"{sub[1][0]['note_str']}.wav")
    with pytest.raises(schema.DataError, match=f"{sub[1][0]['note_str']}.wav is listed in examples.json but missing"):
        batches.label_counts(tmp_path)


def test_parallel_jsonwav_reader_yields_the_notes_in_the_order_of_the_sequential_one(jsonwav_dir, notes, monkeypatch):
    """jsonwav_dataset decodes several wavs at once, yet gives what the one-at-a-time reader gave, in its order:
    note_str order without a seed; with one, pass k in the order of the permutation of all the notes seeded
    [seed, k], synth_lead dropped (a new order each pass)."""
    import threading
    import time
    everything = sorted(m["note_str"] for m, _ in notes)
    leads = {m["note_str"] for m, _ in notes if m["instrument_family"] == 9}
    real, lock, running, most = data._jsonwav_element, threading.Lock(), [0], [0]

    def slow_load(*args, **kwargs):               # counts the notes being read at once
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1
    monkeypatch.setattr(data, "_jsonwav_element", slow_load)
    got = list(data.iterate(data.jsonwav_dataset(str(jsonwav_dir)), jsonwav_dir))
    assert most[0] >= 2, "the wavs were decoded one at a time"
    assert [e["note_str"].decode() for e in got] == [s for s in everything if s not in leads]
    for g, w in zip(got, data.jsonwav_records(str(jsonwav_dir)), strict=True):
        assert set(g) == set(w)
        for k in w:
            np.testing.assert_array_equal(g[k], w[k], err_msg=k)
    ds = data.jsonwav_dataset(str(jsonwav_dir), shuffle_seed=7).map(lambda e: e["note_str"])
    for k in range(2):
        perm = np.random.default_rng([7, k]).permutation(len(everything))
        want = [everything[i] for i in perm if everything[i] not in leads]
        assert [s.decode() for s in data.iterate(ds, jsonwav_dir)] == want, k


def test_real_nsynth_notes_load_unchanged():
    """The 50 real NSynth notes in ../shared: 16 kHz mono 64,000-frame wavs that load_audio must not alter."""
    folder = shared_path("nsynth-real", "audio")
    files = sorted(folder.glob("*.wav"))[:10]
    assert files
    for f in files:
        raw, rate = sf.read(f, dtype="float32")
        assert rate == SR and raw.shape == (N,)
        np.testing.assert_array_equal(load_audio(str(f)), raw)


# ----------------------------------------------------------------------------------------------- bad input
def test_missing_data_path(tmp_path):
    with pytest.raises(schema.DataError, match="does not exist"):
        data.load_arrays(tmp_path / "nope.tfrecord")
    with pytest.raises(schema.DataError, match="No files match"):
        data.nsynth_dataset(str(tmp_path / "nope-*.tfrecord"))


def test_empty_file(tmp_path):
    p = tmp_path / "empty.tfrecord"
    p.write_bytes(b"")
    with pytest.raises(schema.DataError, match="empty"):
        data.load_arrays(p)


def test_folder_without_data(tmp_path):
    (tmp_path / "readme.txt").write_text("no notes here")
    with pytest.raises(schema.DataError, match="neither examples.json"):
        data.load_arrays(tmp_path)


def test_examples_json_broken_or_empty(tmp_path):
    (tmp_path / "examples.json").write_text("{not json")
    with pytest.raises(schema.DataError, match="not valid JSON"):
        data.load_arrays(tmp_path)
    (tmp_path / "examples.json").write_text("{}")
    with pytest.raises(schema.DataError, match="holds no notes"):
        data.load_arrays(tmp_path)


def test_jsonwav_missing_wav(tmp_path, notes):
    writers.write_jsonwav(str(tmp_path), kept(notes)[:2])
    os.remove(tmp_path / "audio" / f"{kept(notes)[1][0]['note_str']}.wav")
    with pytest.raises(schema.DataError, match="missing"):
        data.load_arrays(tmp_path)


def test_only_synth_lead_notes(tmp_path, notes):
    p = tmp_path / "lead.tfrecord"
    writers.write_tfrecord(str(p), [n for n in notes if n[0]["instrument_family"] == 9])
    with pytest.raises(schema.DataError, match="synth_lead"):
        data.load_arrays(p)


def test_truncated_tfrecord(tmp_path, tfrecord_file):
    p = tmp_path / "cut.tfrecord"
    blob = tfrecord_file.read_bytes()
    p.write_bytes(blob[: len(blob) // 2 + 123])
    ds = data.nsynth_dataset(p)                       # opening is lazy; the error comes on iteration
    with pytest.raises(schema.DataError, match="corrupt or truncated"):
        list(data.iterate(ds, p))
    with pytest.raises(schema.DataError, match="corrupt or truncated"):
        data.load_arrays(p)


def test_corrupt_tfrecord(tmp_path, tfrecord_file):
    p = tmp_path / "flipped.tfrecord"
    blob = bytearray(tfrecord_file.read_bytes())
    mid = len(blob) // 3
    blob[mid:mid + 64] = bytes(b ^ 0x5A for b in blob[mid:mid + 64])   # CRC check must fail
    p.write_bytes(bytes(blob))
    with pytest.raises(schema.DataError, match="corrupt or truncated"):
        data.load_arrays(p)


def test_tfrecord_that_is_not_nsynth(tmp_path):
    import tensorflow as tf
    p = tmp_path / "short_audio.tfrecord"
    ex = tf.train.Example(features=tf.train.Features(feature={
        "audio": tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 100))}))
    with tf.io.TFRecordWriter(str(p)) as w:
        w.write(ex.SerializeToString())
    with pytest.raises(schema.DataError) as err:
        data.load_arrays(p)
    assert "NSynth" in str(err.value)
    text = tmp_path / "notes.tfrecord"
    text.write_text("this is a text file, not a TFRecord\n" * 20)
    with pytest.raises(schema.DataError):
        data.load_arrays(text)


def test_writer_rejects_wrong_length(tmp_path, notes):
    m, a = notes[0]
    with pytest.raises(schema.DataError, match="expected"):
        writers.write_tfrecord(str(tmp_path / "bad.tfrecord"), [(m, a[:1000])])
    assert not (tmp_path / "bad.tfrecord").exists()


# ----------------------------------------------------------------------------------------------- audio files
def _write(path, audio, rate, subtype="PCM_16"):
    sf.write(str(path), audio, rate, subtype=subtype)
    return str(path)


def _peak_hz(x, rate=SR):
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return np.argmax(spec) * rate / x.size


def test_wrong_rate_is_resampled(tmp_path):
    """Documented conversion: any rate -> 16 kHz (soxr), then fit to 4 s. Pitch must be preserved."""
    for rate in (44_100, 8_000):
        x = tone(1000.0, seconds=2.0, rate=rate)
        out = load_audio(_write(tmp_path / f"r{rate}.wav", x, rate))
        assert out.shape == (N,) and out.dtype == np.float32
        assert abs(_peak_hz(out[:2 * SR - 200]) - 1000.0) < 2.0          # still a 1 kHz tone
        assert np.max(np.abs(out[2 * SR + 100:])) < 1e-3                  # 2 s of sound, then zero padding
        assert 0.45 < np.max(np.abs(out)) < 0.55


def test_long_file_is_trimmed_and_short_file_padded(tmp_path):
    x = tone(440.0, seconds=6.0)
    out = load_audio(_write(tmp_path / "long.wav", x, SR, "FLOAT"))
    np.testing.assert_array_equal(out, x[:N])
    y = tone(440.0, seconds=0.5)
    out = load_audio(_write(tmp_path / "short.wav", y, SR, "FLOAT"))
    np.testing.assert_array_equal(out[:SR // 2], y)
    assert not out[SR // 2:].any()


def test_stereo_is_averaged_to_mono(tmp_path):
    left, right = tone(440.0, amp=0.6), tone(660.0, amp=0.2)
    out = load_audio(_write(tmp_path / "st.wav", np.stack([left, right], 1), SR, "FLOAT"))
    assert out.shape == (N,)
    np.testing.assert_allclose(out, (left + right) / 2, atol=1e-6)


def test_too_short(tmp_path):
    with pytest.raises(schema.DataError, match="ms long"):
        load_audio(_write(tmp_path / "blip.wav", tone(440.0, seconds=0.01), SR))


def test_silent_file(tmp_path):
    p = _write(tmp_path / "silence.wav", np.zeros(SR, np.float32), SR)
    with pytest.raises(schema.DataError, match="silent"):
        load_audio(p, reject_silent=True)
    out = load_audio(p)                           # accepted (all zeros) unless asked to reject
    assert out.shape == (N,) and not out.any()


def test_not_audio(tmp_path):
    p = tmp_path / "notes.wav"
    p.write_text("This is a text file with a .wav name, not audio.\n" * 50)
    with pytest.raises(schema.DataError, match="not a readable audio file"):
        load_audio(str(p))


def test_missing_and_empty_audio_file(tmp_path):
    with pytest.raises(schema.DataError, match="no such file"):
        load_audio(str(tmp_path / "none.wav"))
    (tmp_path / "zero.wav").write_bytes(b"")
    with pytest.raises(schema.DataError, match="empty"):
        load_audio(str(tmp_path / "zero.wav"))


def test_clipping_input_is_scaled_into_range(tmp_path):
    x = tone(440.0, seconds=1.0, amp=3.0)
    out = load_audio(_write(tmp_path / "hot.wav", x, SR, "FLOAT"))
    assert np.isclose(np.max(np.abs(out)), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[:SR], x / np.max(np.abs(x)), atol=1e-6)


def test_onset_trim_skips_leading_silence(tmp_path):
    x = np.concatenate([np.zeros(SR, np.float32), tone(440.0, seconds=1.0)])
    out = load_audio(_write(tmp_path / "late.wav", x, SR, "FLOAT"), onset_trim=True)
    first = int(np.argmax(np.abs(out) > 0.01))
    assert first <= SR // 100 + 5          # the note starts within ~10 ms of the output's start
    assert np.max(np.abs(out[:SR // 2])) > 0.4


def notes_csv_folder(folder, jsonwav_dir, notes):
    """``folder`` as a hand-collected source: the wavs of ``jsonwav_dir`` and a ``notes.csv`` listing ``notes``."""
    shutil.copytree(jsonwav_dir / "audio", folder / "audio")
    rows = ["note_str,instrument_family_str,instrument_source_str,pitch,velocity"]
    rows += [f"{m['note_str']},{m['instrument_family_str']},{m['instrument_source_str']},{m['pitch']},"
             f"{m['velocity']}" for m, _ in notes]
    (folder / "notes.csv").write_text("\n".join(rows) + "\n")


def test_notes_csv_folder_reads_like_examples_json(tmp_path, jsonwav_dir, notes):
    """A folder of wavs + notes.csv (note_str, family, source, pitch, velocity) is a data source too."""
    sub = kept(notes)[::3]
    notes_csv_folder(tmp_path, jsonwav_dir, sub)
    audio, meta = data.load_arrays(tmp_path)
    assert sorted(meta["note_str"]) == sorted(m["note_str"] for m, _ in sub)
    for m, a in sub:
        i = list(meta["note_str"]).index(m["note_str"])
        assert meta["label"][i] == nsynth_family_to_label(m["instrument_family"])
        assert meta["pitch"][i] == m["pitch"] and meta["instrument_str"][i] == m["instrument_str"]
        assert np.max(np.abs(audio[i] - a)) <= QUANT


def test_shared_real_nsynth_folder_is_a_source():
    folder = shared_path("nsynth-real")
    audio, meta = data.load_arrays(folder)
    assert audio.shape == (50, N)
    assert sorted(set(meta["label"])) == list(range(10))
    for s, fam in zip(meta["note_str"], meta["instrument_family_str"]):
        assert s.startswith(fam + "_")


def test_embedded_sample_is_valid_nsynth_jsonwav():
    """data/nsynth-sample (shipped in the repo): 100 notes, 10 per family, NSynth JSON+wav format."""
    folder = ROOT / "data" / "nsynth-sample"
    if not (folder / "examples.json").is_file():
        pytest.skip("data/nsynth-sample is not in this checkout")
    meta_json = json.loads((folder / "examples.json").read_text())
    audio, meta = data.load_arrays(folder)
    assert audio.shape == (len(meta_json), N) == (100, N)
    assert np.bincount(meta["label"], minlength=10).tolist() == [10] * 10
    for i, s in enumerate(meta["note_str"]):
        m = meta_json[s]
        assert s == f"{m['instrument_str']}-{m['pitch']:03d}-{m['velocity']:03d}" and s == m["note_str"]
        assert m["instrument_family_str"] == NSYNTH_FAMILY_NAMES[m["instrument_family"]]
        assert meta["label"][i] == nsynth_family_to_label(m["instrument_family"])
        info = sf.info(str(folder / "audio" / f"{s}.wav"))
        assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, N, "PCM_16")
        assert np.max(np.abs(audio[i])) > 1e-3, f"{s} is silent"
