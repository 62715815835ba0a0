"""One contract for every layout and file (issue 28): the same shards from any process, the same rejections with the
same message from every reader, gzip told by its bytes, and a saved network that knows which one it is."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from conftest import N, SR, make_notes, subprocess_env
from nsynth_cnn import batches, data, prepare, schema, shards, weights, writers
from nsynth_cnn.__main__ import main
from nsynth_cnn.params import NSYNTH_FAMILY_NAMES, NSYNTH_QUALITY_NAMES


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(prepare.CACHE_ENV, str(tmp_path / "cache"))


def cheap_notes(per_family: int, families=range(11)):
    """Family-ordered ``(meta, audio)`` pairs whose audio is cheap to make: zeros but for the note's index."""
    k = 0
    for fam in families:
        src = "synthetic" if fam in (9, 10) else "acoustic"
        for i in range(per_family):
            meta = writers.note_metadata(family=NSYNTH_FAMILY_NAMES[fam], source=src, instrument=fam * 100 + i,
                                      pitch=30 + i, velocity=(25, 50, 75, 100, 127)[i % 5], note=k,
                                      qualities=[(i >> b) & 1 for b in range(10)])
            audio = np.zeros(N, np.float32)
            audio[0], audio[1] = k / 32768.0, -0.25
            k += 1
            yield meta, audio


def shard_bytes(folder) -> dict:
    return {f: open(os.path.join(folder, f), "rb").read() for f in sorted(os.listdir(folder))
            if f.endswith(".tfrecord") or f == shards.STATS_FILE}


# ----------------------------------------------------------------------------------------------- 1. deterministic bytes
RUN = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, os.path.dirname(sys.argv[1]))
    from test_contract import cheap_notes
    from nsynth_cnn import batches, data, prepare, writers
    tests_file, written, src, out, kill_at = sys.argv[1:6]
    writers.write_tfrecord(written, cheap_notes(2))
    if int(kill_at):                      # SIGKILL in the middle of a chunk of pass 1: nothing cleaned up
        real = prepare._source_elements
        def dying(src, skip=0):
            for i, pair in enumerate(real(src, skip)):
                if skip + i == int(kill_at):
                    os.kill(os.getpid(), signal.SIGKILL)
                yield pair
        prepare._source_elements = dying
    prepare.prepare(src, out, shards=3, chunk_notes=16, log=None)
""")


def _run(tmp_path, tag, out, kill_at, seed):
    """RUN in a new interpreter with its own hash seed (protobuf's map order may follow it)."""
    return subprocess.run([sys.executable, "-c", RUN, os.path.abspath(__file__), str(tmp_path / f"{tag}.tfrecord"),
                           str(tmp_path / "nsynth-train.tfrecord"), str(tmp_path / out), str(kill_at)],
                          env=subprocess_env(PYTHONHASHSEED=str(seed)), capture_output=True, text=True, timeout=900)


@pytest.mark.slow                                   # starts subprocesses
def test_same_bytes_in_every_process_and_after_a_kill(tmp_path):
    """write_tfrecord and prepare give the same bytes in processes with other hash seeds; a prepare run killed in
    pass 1 and resumed by another process gives the shards of an uninterrupted run."""
    src = tmp_path / "nsynth-train.tfrecord"
    writers.write_tfrecord(str(src), cheap_notes(8))                      # 88 notes: 6 chunks of 16
    proc = _run(tmp_path, "w1", "clean", 0, seed=1)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run(tmp_path, "w2", "killed", 40, seed=2)                  # killed in the third chunk
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    with open(tmp_path / "killed" / prepare.TMP_DIR / prepare.PROGRESS_FILE) as fh:
        assert json.load(fh)["chunks_done"] == 2
    proc = _run(tmp_path, "w3", "killed", 0, seed=3)                   # resumed by another process
    assert proc.returncode == 0, proc.stderr[-3000:]
    clean = shard_bytes(tmp_path / "clean")
    assert len(clean) == 4 and shard_bytes(tmp_path / "killed") == clean
    prepare.prepare(str(src), str(tmp_path / "here"), shards=3, chunk_notes=16, log=None)
    assert shard_bytes(tmp_path / "here") == clean                     # and this process, whatever its seed
    writers.write_tfrecord(str(tmp_path / "w0.tfrecord"), cheap_notes(2))
    written = {(tmp_path / f"w{i}.tfrecord").read_bytes() for i in range(4)}
    assert len(written) == 1


# ----------------------------------------------------------------------------------------------- 2. one contract
LAYOUTS = ("tfrecord", "prepared", "tfds", "jsonwav", "notes_csv")
CASES = ("nonfinite", "short", "family", "missing")


def _bad(case, meta, audio):
    """The second note made bad: meta/audio as the writers take them (missing and short are done per layout)."""
    meta, audio = dict(meta), audio.copy()
    if case == "nonfinite":
        audio[1000] = np.nan
    elif case == "family":
        meta["instrument_family"] = 99
    return meta, audio


def _example(serialized):
    tf = schema.tensorflow()
    ex = tf.train.Example()
    ex.ParseFromString(serialized)
    return ex


def _write_records(path, examples):
    tf = schema.tensorflow()
    with tf.io.TFRecordWriter(str(path)) as w:
        for ex in examples:
            w.write(ex.SerializeToString())


def _tfds_example(meta, audio):
    tf = schema.tensorflow()
    ex = tf.train.Example()
    f = ex.features.feature
    f["id"].bytes_list.value.append(meta["note_str"].encode())
    f["audio"].float_list.value.extend(audio.tolist())
    for key, value in (("pitch", meta["pitch"]), ("velocity", meta["velocity"]),
                       ("instrument/label", meta["instrument"]), ("instrument/family", meta["instrument_family"]),
                       ("instrument/source", meta["instrument_source"])):
        f[key].int64_list.value.append(int(value))
    for q, v in zip(NSYNTH_QUALITY_NAMES, meta["qualities"]):
        f[f"qualities/{q}"].int64_list.value.append(int(v))
    return ex


def make_layout(tmp_path, layout, case):
    """``(source, where)``: ``layout`` holding two notes, the second of them bad in the way ``case`` says, and how
    the readers name that note (``None``: the reader cannot name it, "a note")."""
    (good_m, good_a), (bad_m, bad_a) = make_notes(per_family=1, families=[3, 4])
    bad_m, bad_a = _bad(case, bad_m, bad_a)
    name = bad_m["note_str"]
    if layout in ("tfrecord", "prepared", "tfds"):
        folder = tmp_path / layout
        folder.mkdir()
        if layout == "tfrecord":
            examples = [_example(writers.serialize_note(m, a)) for m, a in ((good_m, good_a), (bad_m, bad_a))]
            audio_key, path = "audio", folder / "nsynth-test.tfrecord"
        elif layout == "prepared":
            examples = [_example(shards.serialize_prepared(m, shards.quantize(a)))
                        for m, a in ((good_m, good_a), (bad_m, bad_a))]
            audio_key, path = shards.AUDIO_KEY, folder / shards.SHARD_PATTERN.format(0, 1)
            (folder / shards.PREPARED_MARKER).write_text(json.dumps({"format": shards.FORMAT}))
        else:
            examples = [_tfds_example(m, a) for m, a in ((good_m, good_a), (bad_m, bad_a))]
            audio_key, path = "audio", folder / "nsynth-test.tfrecord-00000-of-00001"
            (folder / "dataset_info.json").write_text(json.dumps({"name": "nsynth"}))
        feat = examples[1].features.feature
        if case == "missing":
            del feat["pitch"]
        elif case == "short" and audio_key == "audio":
            del feat["audio"].float_list.value[N // 2:]
        elif case == "short":
            feat[audio_key].bytes_list.value[0] = feat[audio_key].bytes_list.value[0][:N]     # N bytes: N/2 samples
        _write_records(path, examples)
        source = folder if layout != "tfrecord" else path
        by_parse = case == "missing" or case == "short" and layout != "prepared"     # tf.io.parse_example's error
        return source, f"{source}: a note" if by_parse else f"{source}: note {name}"
    folder = tmp_path / layout
    if case == "missing":
        del bad_m["pitch"]
    writers.write_jsonwav(str(folder), [(good_m, good_a), (bad_m, bad_a)])
    wav = folder / "audio" / f"{name}.wav"
    if case == "nonfinite":
        sf.write(str(wav), bad_a, SR, subtype="FLOAT")                  # a float wav can hold NaN
    elif case == "short":
        sf.write(str(wav), bad_a[:N // 2], SR, subtype="PCM_16")
    if layout == "jsonwav":
        return folder, f"{folder / 'examples.json'}: note {name}"
    os.remove(folder / "examples.json")
    rows = ["note_str,instrument_family_str,instrument_source_str,pitch,velocity"]
    for m in (good_m, bad_m):
        fam = "kazoo" if case == "family" and m is bad_m else m["instrument_family_str"]
        pitch = "" if case == "missing" and m is bad_m else m["pitch"]
        rows.append(f"{m['note_str']},{fam},{m['instrument_source_str']},{pitch},{m['velocity']}")
    (folder / "notes.csv").write_text("\n".join(rows) + "\n")
    in_listing = case in ("family", "missing")                          # found in notes.csv itself, by line
    return folder, f"{folder / 'notes.csv'}{' line 3' if in_listing else ''}: note {name}"


def expected_error(case, layout, where) -> str:
    if case == "nonfinite":
        return str(schema.nonfinite_error(where))
    if case == "short":
        return str(schema.length_error(where, N // 2))
    if case == "missing":
        return str(schema.missing_error(where, "pitch"))
    if layout == "notes_csv":                                            # notes.csv names families, not ids
        return str(schema.family_error(where, "kazoo", key="instrument_family_str"))
    return str(schema.family_error(where, 99))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_reader_rejects_the_same_notes_with_the_same_message(tmp_path, layout, case):
    if layout == "prepared" and case == "nonfinite":
        # int16 shards cannot hold NaN: making them from a source that does is refused, with the same message
        src, where = make_layout(tmp_path, "tfrecord", case)
        with pytest.raises(schema.DataError) as err:
            prepare.prepare(str(src), str(tmp_path / "out"), shards=1, log=None)
        assert str(err.value) == expected_error(case, layout, where)
        meta, audio = _bad(case, *make_notes(per_family=1, families=[3])[0])
        with pytest.raises(schema.DataError) as err:                       # nor can a caller's own notes slip in
            shards.serialize_prepared({**meta, "audio": audio})
        assert str(err.value).endswith(expected_error(case, layout, "x")[1:])
        return
    source, where = make_layout(tmp_path, layout, case)
    with pytest.raises(schema.DataError) as err:
        data.load_arrays(source)
    assert str(err.value) == expected_error(case, layout, where)
    if case != "missing":                  # training reads only audio + family: same message, same source named
        with pytest.raises(schema.DataError) as err:
            list(data.iterate(batches.training_dataset(source, batch_size=2, shuffle_buffer=0, seed=0), source))
        msg = str(err.value)
        assert msg.startswith(str(source)) and msg.endswith(expected_error(case, layout, "x")[1:]), msg


def test_good_notes_still_read_alike_in_every_layout(tmp_path):
    """The checks reject nothing valid: the same two notes from each layout (the case of no fault)."""
    (good_m, good_a), (other_m, other_a) = make_notes(per_family=1, families=[3, 4])
    for layout in ("tfrecord", "jsonwav"):
        folder = tmp_path / layout
        if layout == "tfrecord":
            folder.mkdir()
            writers.write_tfrecord(str(folder / "x.tfrecord"), [(good_m, good_a), (other_m, other_a)])
        else:
            writers.write_jsonwav(str(folder), [(good_m, good_a), (other_m, other_a)])
        audio, meta = data.load_arrays(folder)
        assert sorted(meta["note_str"]) == sorted([good_m["note_str"], other_m["note_str"]])
        assert audio.shape == (2, N) and np.all(np.isfinite(audio))


# ----------------------------------------------------------------------------------------------- 3. gzip by its bytes
def _gzip_tfrecord(path, notes):
    tf = schema.tensorflow()
    with tf.io.TFRecordWriter(str(path), options="GZIP") as w:
        for meta, audio in notes:
            w.write(writers.serialize_note(meta, audio))


def test_gzip_is_told_by_its_magic_bytes_whatever_the_name(tmp_path, tfrecord_file):
    want_audio, want_meta = data.load_arrays(tfrecord_file)
    notes = make_notes()
    for name in ("nsynth-test.tfrecord", "nsynth-test.tfrecord-00000-of-00001", "download"):
        path = tmp_path / name
        _gzip_tfrecord(path, notes)
        assert path.read_bytes()[:2] == b"\x1f\x8b" and data.compression_type(str(path)) == "GZIP"
        audio, meta = data.load_arrays(path)                            # tfrecord_dataset
        np.testing.assert_array_equal(audio, want_audio)
        assert list(meta["note_str"]) == list(want_meta["note_str"])
        assert len(list(data.record_dataset([str(path)]))) == len(notes)
        os.remove(path)
    # a plain TFRecord named .gz is read as it is (no "download it again")
    plain = tmp_path / "nsynth-test.tfrecord.gz"
    plain.write_bytes(tfrecord_file.read_bytes())
    assert data.compression_type(str(plain)) == ""
    np.testing.assert_array_equal(data.load_arrays(plain)[0], want_audio)
    # prepare's source reading, its size estimates, and TFDS detection by the first record
    folder = tmp_path / "mixed"
    folder.mkdir()
    _gzip_tfrecord(folder / "a.tfrecord", notes[:11])
    shutil.copy(tfrecord_file, folder / "b.tfrecord.gz")                 # plain, named .gz
    kind, files = data.resolve_source(folder)
    assert prepare._estimate_notes(kind, files) is None                  # a compressed file: count unknown
    prepare.prepare(str(folder), str(tmp_path / "prepared"), shards=2, log=None)
    assert batches.label_counts(tmp_path / "prepared").sum() == 11 + 20           # synth_lead dropped from b
    tfds = tmp_path / "tfds"
    tfds.mkdir()
    tf = schema.tensorflow()
    with tf.io.TFRecordWriter(str(tfds / "nsynth-train.tfrecord-00000-of-00001"), options="GZIP") as w:
        w.write(_tfds_example(*notes[0]).SerializeToString())
    from nsynth_cnn import tfds_format
    assert tfds_format.is_tfds(data.resolve_source(tfds)[1])


def test_a_plain_record_whose_length_starts_like_gzip_is_not_taken_for_gzip(tmp_path):
    tf = schema.tensorflow()
    path = tmp_path / "odd.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        w.write(b"\0" * 0x8B1F)                                          # length bytes 1f 8b 00 ...
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert data.compression_type(str(path)) == ""
    assert [len(r.numpy()) for r in data.record_dataset([str(path)])] == [0x8B1F]
    (tmp_path / "tiny").write_bytes(b"\x1f\x8b")
    assert data.compression_type(str(tmp_path / "tiny")) == "GZIP"     # too short to be a TFRecord


# ----------------------------------------------------------------------------------------------- 4. identity
@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Both (untrained) networks saved where they belong, and swapped."""
    import keras

    from nsynth_cnn import models
    keras.utils.set_random_seed(0)
    right, swapped = tmp_path_factory.mktemp("right"), tmp_path_factory.mktemp("swapped")
    for name in ("waveform", "logmel"):
        models.build_model(name).save(str(right / f"{name}_cnn.keras"))
    shutil.copy(right / "waveform_cnn.keras", swapped / "logmel_cnn.keras")
    shutil.copy(right / "logmel_cnn.keras", swapped / "waveform_cnn.keras")
    return right, swapped


def test_a_network_saved_under_the_other_name_is_refused(saved):
    right, swapped = saved
    for name, front in (("waveform", "AntiAliasDownsample + GaborFilterbank"), ("logmel", "LogMelSpectrogram")):
        model = weights.load_trained(name, str(right))
        assert weights.network_identity(model) == {"name": name, "front_end": front.split(" + "),
                                                   "keras_name": f"{name}_cnn"}
    path = swapped / "logmel_cnn.keras"
    for load in (lambda: weights.load_trained("logmel", str(swapped)), lambda: weights.load_model_file(str(path))):
        with pytest.raises(weights.WeightsError) as err:
            load()
        msg = str(err.value)
        assert msg.startswith(f"{path} holds the waveform CNN (Keras model 'waveform_cnn', front end "
                              "AntiAliasDownsample + GaborFilterbank), not the log-mel CNN"), msg
        assert "restore" in msg and "train --model logmel" in msg and f"{swapped / 'waveform_cnn.keras'}" in msg
    with pytest.raises(weights.WeightsError, match="holds the log-mel CNN .*LogMelSpectrogram.*not the waveform CNN"):
        weights.load_trained("waveform", str(swapped))
    # a file under another name is loaded as what it is, unless a network is asked for
    other = swapped / "copy.keras"
    shutil.copy(path, other)
    assert weights.load_model_file(str(other)).name == "waveform_cnn"
    with pytest.raises(weights.WeightsError, match="holds the waveform CNN"):
        weights.load_model_file(str(other), "logmel")


def test_a_network_of_no_known_kind_is_refused(tmp_path):
    import keras
    model = keras.Sequential([keras.Input((N,)), keras.layers.Dense(10, activation="softmax")], name="mystery")
    model.save(str(tmp_path / "logmel_cnn.keras"))
    with pytest.raises(weights.WeightsError, match="should hold the log-mel CNN but holds a network this project "
                                                   "does not know \\(Keras model 'mystery'"):
        weights.load_trained("logmel", str(tmp_path))


def test_shipped_networks_know_what_they_are():
    for name in ("waveform", "logmel"):
        path = weights.weights_path(weights.DEFAULT_DIR, name)
        if not os.path.isfile(path):
            pytest.skip(f"{path} is not in this checkout")
        assert weights.network_identity(weights.load_trained(name))["name"] == name


def test_evaluation_json_records_the_weights_file_and_its_sha256(saved, tfrecord_file, tmp_path, capsys):
    right, swapped = saved
    out = tmp_path / "eval.json"
    assert main(["evaluate", "--model", "logmel", "--data", str(tfrecord_file), "--weights", str(right),
                 "--out", str(out), "--compare", str(right)]) == 0
    res = json.loads(out.read_text())
    path = os.path.join(str(right), "logmel_cnn.keras")
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest()
    assert res["weights_file"] == {"path": path, "sha256": sha}
    assert res["paired"]["weights_file"] == {"path": path, "sha256": sha}
    capsys.readouterr()
    rc = main(["evaluate", "--model", "logmel", "--data", str(tfrecord_file), "--weights", str(swapped),
               "--out", str(tmp_path / "no.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds the waveform CNN" in err and not (tmp_path / "no.json").exists()
