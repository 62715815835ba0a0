"""Hostile and mistaken input (issue 24): every case gets one clear message that names the fix, never a traceback.

Issue 24's training-state cases (interrupted/resumed training, weights and history files) live in another test
file, written by a colleague; this file covers bounded audio decoding (the web page and ``predict``), family-id
validation in every reader, ``evaluate``/``predict`` argument checks, and the wording of data-source errors.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import soundfile as sf

from conftest import N, SR, make_notes, subprocess_env
from nsynth_cnn import audio as audio_files, schema
from nsynth_cnn import batches, data, writers
from nsynth_cnn.__main__ import main
from nsynth_cnn.params import FAMILIES, NSYNTH_FAMILY_NAMES
from nsynth_cnn.audio import AudioWarning, MAX_DECODE_SECONDS, fit_length, load_audio

LONG_RATE, LONG_CHANNELS = 192_000, 8


# ----------------------------------------------------------------------------------------------- helpers
def write_long_flac(path, seconds: int, note_at: int | None = None, rate: int = LONG_RATE,
                    channels: int = LONG_CHANNELS) -> int:
    """Minutes of 192 kHz 8-channel silence (FLAC: a few hundred KB), optionally a 1 s note (different gain per
    channel) starting at second ``note_at``. Written second by second (never the whole file in memory).
    Returns the frame count."""
    t = np.arange(rate) / rate
    note = (0.5 * np.sin(2 * np.pi * 440.0 * t) * np.exp(-3.0 * t))[:, None] * np.linspace(0.2, 0.9, channels)
    zeros = np.zeros((rate, channels), np.float32)
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=channels, format="FLAC", subtype="PCM_16") as f:
        for s in range(seconds):
            f.write(note.astype(np.float32) if s == note_at else zeros)
    return seconds * rate


def full_decode_reference(path) -> np.ndarray:
    """What load_audio gave before decoding was bounded: the whole file read, averaged, resampled, onset-trimmed."""
    import soxr
    audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    mono = soxr.resample(audio.mean(axis=1), rate, SR, quality="HQ").astype(np.float32)
    peak = float(np.max(np.abs(mono)))
    start = int(np.argmax(np.abs(mono) >= 0.01 * peak))
    return fit_length(mono[max(0, start - SR // 100):])


def truncated_wav(path, seconds: float = 4.0, keep: float = 0.5):
    """A 16-bit wav whose header announces ``seconds`` of audio, cut to ``keep`` of its bytes."""
    t = np.arange(int(seconds * SR)) / SR
    x = (0.5 * np.sin(2 * np.pi * 330.0 * t) * np.exp(-t)).astype(np.float32)
    full = io.BytesIO()
    sf.write(full, x, SR, format="WAV", subtype="PCM_16")
    blob = full.getvalue()
    path.write_bytes(blob[:int(len(blob) * keep)])
    return x


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A saved (untrained) log-mel model: enough for predict/evaluate to run end to end."""
    import keras

    from nsynth_cnn import models
    keras.utils.set_random_seed(0)
    folder = tmp_path_factory.mktemp("hostile-weights")
    models.build_model("logmel").save(str(folder / "logmel_cnn.keras"))
    return folder


# ----------------------------------------------------------------------------------------------- 3. bounded decoding
MEASURE = textwrap.dedent("""
    import io, json, os, resource, sys, tracemalloc
    import numpy as np
    from nsynth_cnn import batches, data, writers
    from nsynth_cnn.audio import load_audio
    from nsynth_cnn.tools.serve import create_app

    def rss_kb(key):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(key))

    def reset_peak():
        try:                               # Linux >= 4.0: reset the peak RSS to the current RSS
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return rss_kb("VmRSS")
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def measure(fn):
        base = reset_peak()
        tracemalloc.start()
        out = fn()
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return out, 1024 * (rss_kb("VmHWM") - base), traced

    note_file, silent_file, out_npy, tmpdir = sys.argv[1:5]
    audio, rss, traced = measure(lambda: load_audio(note_file, reject_silent=True, onset_trim=True))
    np.save(out_npy, audio)
    app = create_app(weights_dir=os.path.join(tmpdir, "no-weights"), sample_dir=os.path.join(tmpdir, "no-sample"),
                     upload_tmpdir=tmpdir)
    client = app.test_client()
    client.get("/")                        # warm up templates etc. before measuring
    blob = open(silent_file, "rb").read()
    post = lambda: client.post("/classify", data={"audio": (io.BytesIO(blob), "silence.flac")},
                               content_type="multipart/form-data")
    resp, rss_page, traced_page = measure(post)
    print(json.dumps({"rss": rss, "traced": traced, "rss_page": rss_page, "traced_page": traced_page,
                      "status": resp.status_code, "page": resp.get_data(as_text=True)}))
""")


@pytest.mark.slow
def test_long_compressed_upload_decodes_in_bounded_memory(tmp_path):
    """A small FLAC of minutes of 192 kHz 8-channel audio: load_audio and the web page decode only the first
    MAX_DECODE_SECONDS, block-wise, so peak memory is a small fraction of the whole file as float32; the note is
    the same 64,000 samples a full decode gives, and the silent file is rejected as silent."""
    note_file, silent_file = tmp_path / "long-note.flac", tmp_path / "long-silence.flac"
    frames_note = write_long_flac(note_file, 150, note_at=2)
    frames_silent = write_long_flac(silent_file, 300)
    assert note_file.stat().st_size < 1.5e6 and silent_file.stat().st_size < 1.5e6   # small files...
    full_note = frames_note * LONG_CHANNELS * 4                                       # ...huge decoded
    full_silent = frames_silent * LONG_CHANNELS * 4
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(note_file), str(silent_file),
                           str(tmp_path / "out.npy"), str(uploads)],
                          env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\nbounded decoding: load_audio 150 s 192 kHz x8 FLAC ({note_file.stat().st_size / 1e3:.0f} KB): full "
          f"decode {full_note / 1e6:.0f} MB, peak RSS +{m['rss'] / 1e6:.1f} MB, traced {m['traced'] / 1e6:.1f} MB; "
          f"page upload 300 s ({silent_file.stat().st_size / 1e3:.0f} KB): full decode {full_silent / 1e6:.0f} MB, "
          f"peak RSS +{m['rss_page'] / 1e6:.1f} MB, traced {m['traced_page'] / 1e6:.1f} MB")
    for peak in (m["rss"], m["traced"]):
        assert peak < full_note / 4 and peak < 64e6
    for peak in (m["rss_page"], m["traced_page"]):
        assert peak < full_silent / 4 and peak < 64e6
    assert m["status"] == 400 and "silent in its first 30 s" in m["page"] and "silence.flac" in m["page"]
    assert os.listdir(uploads) == []
    # still the right note: what a full decode of the same first seconds gives
    audio = np.load(tmp_path / "out.npy")
    short = tmp_path / "short.flac"
    write_long_flac(short, 8, note_at=2)
    expected = full_decode_reference(short)
    assert audio.shape == (N,) and audio.dtype == np.float32
    np.testing.assert_allclose(audio, expected, atol=1e-6)
    assert np.max(np.abs(audio[:SR // 50])) > 0.05     # the clip starts at the note's onset


def test_decode_stops_at_the_cap(tmp_path, monkeypatch):
    """Only ceil(MAX_DECODE_SECONDS x rate) frames are pulled from the decoder, whatever the file's length."""
    path = tmp_path / "long.flac"
    write_long_flac(path, 60, note_at=1, rate=48_000, channels=2)
    got = []
    real = audio_files._decode_mono

    def spy(blocks, rate, channels, max_frames, *rest):
        def counted():
            for b in blocks:
                got.append(len(b))
                yield b
        return real(counted(), rate, channels, max_frames, *rest)

    monkeypatch.setattr(audio_files, "_decode_mono", spy)
    load_audio(str(path), onset_trim=True)
    assert MAX_DECODE_SECONDS * 48_000 <= sum(got) < (MAX_DECODE_SECONDS + 1) * 48_000


def test_absurd_headers_are_rejected_before_decoding(tmp_path):
    x = np.zeros(SR, np.float32)
    sf.write(str(tmp_path / "ok.wav"), x, SR, subtype="PCM_16")
    blob = bytearray((tmp_path / "ok.wav").read_bytes())
    blob[24:28] = (2_000_000).to_bytes(4, "little")          # WAV fmt chunk: sample rate
    (tmp_path / "fast.wav").write_bytes(bytes(blob))
    with pytest.raises(schema.DataError, match=r"fast\.wav: the header says 2,000,000 samples/s; 1,000 to 768,000"):
        load_audio(str(tmp_path / "fast.wav"))
    sf.write(str(tmp_path / "many.wav"), np.zeros((800, 65), np.float32), SR, subtype="PCM_16")
    with pytest.raises(schema.DataError, match=r"many\.wav: the header says 65 channels; 1 to 64 are accepted"):
        load_audio(str(tmp_path / "many.wav"))
    sf.write(str(tmp_path / "ok64.wav"), np.full((1600, 64), 0.25, np.float32), SR, subtype="PCM_16")
    assert load_audio(str(tmp_path / "ok64.wav"))[:1600] == pytest.approx(0.25, abs=1e-4)


def test_upload_is_decoded_in_memory_inside_the_compute_lock(tmp_path, monkeypatch):
    """While the upload is decoded the compute lock is held and no upload file exists on disk (so a crash
    mid-decode leaves nothing behind); an upload that only the audioread fallback could decode goes through an
    unnamed temporary file."""
    from nsynth_cnn.tools import serve
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    app = serve.create_app(weights_dir=str(tmp_path / "w"), sample_dir=str(tmp_path / "s"),
                           upload_tmpdir=str(uploads))
    lock = app.extensions["nsynth_compute_lock"]
    seen = []
    real = serve.load_audio

    def spy(source, **kwargs):
        seen.append((lock.locked(), isinstance(source, (str, os.PathLike)), os.listdir(uploads)))
        return real(source, **kwargs)

    monkeypatch.setattr(serve, "load_audio", spy)
    opened = []
    import audioread
    real_open = audioread.audio_open

    def open_spy(path, *a, **k):
        opened.append((path, os.listdir(uploads)))
        return real_open(path, *a, **k)

    monkeypatch.setattr(audioread, "audio_open", open_spy)
    client = app.test_client()
    wav = io.BytesIO()
    sf.write(wav, np.zeros(SR, np.float32), SR, format="WAV", subtype="PCM_16")
    for blob, name in ((wav.getvalue(), "quiet.wav"), (b"not audio at all\n" * 100, "notes.m4a")):
        resp = client.post("/classify", data={"audio": (io.BytesIO(blob), name)}, content_type="multipart/form-data")
        assert resp.status_code == 400 and name in resp.get_data(as_text=True)
    assert seen == [(True, False, []), (True, False, [])]
    assert len(opened) == 1 and opened[0][0].startswith("/proc/") and opened[0][1] == []   # unnamed temp file
    assert os.listdir(uploads) == []


def test_truncated_wav_is_classified_with_a_warning(tmp_path, weights, capsys):
    path = tmp_path / "cut.wav"
    x = truncated_wav(path)
    with pytest.warns(AudioWarning, match=r"cut\.wav: the audio file is cut short: its header announces "
                                               r"4\.00 s of audio but the file holds 2\.00 s"):
        out = load_audio(str(path))
    np.testing.assert_allclose(out[:2 * SR - 50], x[:2 * SR - 50], atol=1e-4)
    assert not out[2 * SR:].any()
    good = tmp_path / "good.wav"
    sf.write(str(good), x, SR, subtype="PCM_16")
    rc = main(["predict", str(path), str(good), "--model", "logmel", "--weights", str(weights)])
    cap = capsys.readouterr()
    assert rc == 0
    warning_lines = [ln for ln in cap.err.splitlines() if ln.startswith("warning:")]
    assert len(warning_lines) == 1 and "cut.wav" in warning_lines[0] and "cut short" in warning_lines[0]
    assert str(path) in cap.out and str(good) in cap.out
    rc = main(["predict", str(path), str(good), "--model", "logmel", "--weights", str(weights), "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert "cut short" in res[0]["warning"] and len(res[0]["logmel"]["top"]) == 3
    assert "warning" not in res[1]
    # the web page decodes it too (with the warning in the file facts)
    from werkzeug.datastructures import FileStorage

    from nsynth_cnn.tools import serve
    audio, info = serve._decode_upload(FileStorage(io.BytesIO(path.read_bytes()), "cut.wav"), "cut.wav", None)
    assert audio.shape == (N,) and "cut short" in info["warning"]
    app = serve.create_app(weights_dir=str(weights), sample_dir=str(tmp_path / "no-sample"))
    resp = app.test_client().post("/classify", data={"audio": (io.BytesIO(path.read_bytes()), "cut.wav")},
                                  content_type="multipart/form-data")
    page = resp.get_data(as_text=True)
    assert resp.status_code == 200 and 'id="decode-warning"' in page and "cut short" in page   # shown on the page


def test_truncated_flac_keeps_what_decodes_with_a_warning(tmp_path):
    x = (0.5 * np.sin(2 * np.pi * 220.0 * np.arange(N) / SR)).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, x, SR, format="FLAC", subtype="PCM_16")
    (tmp_path / "cut.flac").write_bytes(buf.getvalue()[:len(buf.getvalue()) // 2])
    notes = []
    out = load_audio(str(tmp_path / "cut.flac"), on_warning=notes.append)
    assert len(notes) == 1 and "damaged or cut short after" in notes[0] and "of the 4.00 s" in notes[0]
    kept = int(np.flatnonzero(out)[-1]) + 1
    assert SR // 2 < kept < N
    np.testing.assert_allclose(out[:kept], x[:kept], atol=1e-4)


# ----------------------------------------------------------------------------------------------- 4. family ids
def _notes_with_family(family_id: int):
    notes = make_notes(per_family=1, families=[3, 4])
    notes[1][0]["instrument_family"] = family_id
    return notes, notes[1][0]["note_str"]


@pytest.mark.parametrize("family_id", [99, -1, 11])
def test_family_out_of_range_is_an_error_in_every_reader(tmp_path, family_id):
    notes, bad = _notes_with_family(family_id)
    rec = tmp_path / "bad.tfrecord"
    writers.write_tfrecord(str(rec), notes)
    tail = f"instrument_family {family_id} is not an NSynth family; NSynth instrument_family ids are 0..10 (0 bass"
    with pytest.raises(schema.DataError) as err:
        data.load_arrays(rec)
    msg = str(err.value)
    assert msg.startswith(f"{rec}: note {bad}: {tail}") and "10 vocal" in msg, msg
    # training reads only audio + family (no note names): same message, naming the file
    with pytest.raises(schema.DataError, match=re.escape(f"{rec}: a note: {tail}")):
        list(data.iterate(batches.training_dataset(rec, batch_size=2, shuffle_buffer=0, seed=0), rec))
    folder = tmp_path / "jsonwav"
    writers.write_jsonwav(str(folder), notes)
    with pytest.raises(schema.DataError) as err:
        data.load_arrays(folder)
    assert str(err.value).startswith(f"{folder / 'examples.json'}: note {bad}: {tail}"), str(err.value)
    assert str(err.value).split(": ", 2)[2] == msg.split(": ", 2)[2]          # word for word the same


def test_notes_csv_unknown_family_or_source(tmp_path, jsonwav_dir, notes):
    import shutil
    shutil.copytree(jsonwav_dir / "audio", tmp_path / "audio")
    m = notes[0][0]
    head = "note_str,instrument_family_str,instrument_source_str,pitch,velocity\n"
    (tmp_path / "notes.csv").write_text(head + f"{m['note_str']},kazoo,acoustic,{m['pitch']},{m['velocity']}\n")
    with pytest.raises(schema.DataError, match=r"notes\.csv line 2: note .*: instrument_family_str 'kazoo' is not an "
                                             r"NSynth family; NSynth instrument_family ids are 0\.\.10 \(0 bass"):
        data.load_arrays(tmp_path)
    (tmp_path / "notes.csv").write_text(head + f"{m['note_str']},bass,alien,{m['pitch']},{m['velocity']}\n")
    with pytest.raises(schema.DataError, match="instrument_source_str 'alien' is not an NSynth source"):
        data.load_arrays(tmp_path)
    (tmp_path / "notes.csv").write_text("note_str,family\nx,bass\n")
    with pytest.raises(schema.DataError, match="lacks the columns instrument_family_str, pitch, velocity"):
        data.load_arrays(tmp_path)


def test_valid_edge_families_still_read(tmp_path):
    notes = make_notes(per_family=1, families=[0, 10])
    rec = tmp_path / "edges.tfrecord"
    writers.write_tfrecord(str(rec), notes)
    _, meta = data.load_arrays(rec)
    assert meta["instrument_family"].tolist() == [0, 10] and meta["label"].tolist() == [0, 9]


def test_json_metadata_shapes_are_checked(tmp_path):
    notes = make_notes(per_family=1, families=[3])
    notes[0][0]["qualities"] = [0, 1]
    writers.write_jsonwav(str(tmp_path), notes)
    with pytest.raises(schema.DataError, match=r"examples\.json: note .*: qualities is \[0, 1\]; NSynth notes have "
                                             "10 0/1 flags"):
        data.load_arrays(tmp_path)


# ----------------------------------------------------------------------------------------------- 5. arguments
def test_evaluate_out_folder_is_created_first(tmp_path, weights, tfrecord_file, capsys):
    out = tmp_path / "new" / "deeper" / "eval.json"
    rc = main(["evaluate", "--model", "logmel", "--data", str(tfrecord_file), "--weights", str(weights),
               "--out", str(out)])
    cap = capsys.readouterr()
    assert rc == 0 and "evaluated 20 notes" in cap.out, cap.err
    assert json.loads(out.read_text())["notes"] == 20
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    rc = main(["evaluate", "--model", "logmel", "--data", str(tfrecord_file), "--weights", str(weights),
               "--out", str(blocker / "eval.json")])
    cap = capsys.readouterr()
    assert rc == 2 and cap.err.startswith("error: --out") and "cannot create its folder" in cap.err
    assert "evaluated" not in cap.out          # failed before the evaluation, not after it
    rc = main(["evaluate", "--model", "logmel", "--data", str(tfrecord_file), "--weights", str(weights),
               "--out", str(tmp_path)])
    assert rc == 2 and "is a folder; give a file name" in capsys.readouterr().err


@pytest.mark.parametrize("argv,flag", [
    (["evaluate", "--data", "x", "--batch-size", "0"], "--batch-size"),
    (["evaluate", "--data", "x", "--batch-size", "-4"], "--batch-size"),
    (["evaluate", "--data", "x", "--batch-size", "two"], "--batch-size"),
    (["predict", "x.wav", "--top", "-3"], "--top"),
    (["predict", "x.wav", "--top", "0"], "--top"),
    (["predict", "x.wav", "--top", "11"], "--top"),
])
def test_bad_numbers_are_argparse_errors(argv, flag, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and flag in err and "give a whole number" in err and "Traceback" not in err


def test_predict_top_ten(tmp_path, weights, capsys):
    sf.write(str(tmp_path / "n.wav"), make_notes(per_family=1, families=[2])[0][1], SR)
    assert main(["predict", str(tmp_path / "n.wav"), "--model", "logmel", "--weights", str(weights), "--top", "10",
                 "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["logmel"]["top"]
    assert sorted(t["family"] for t in top) == sorted(FAMILIES)


# ----------------------------------------------------------------------------------------------- 6. wording
def test_short_audio_record_gets_the_specific_message(tmp_path):
    """32,000 samples: the cause comes late in TF's (long) message; it must still be found."""
    import tensorflow as tf
    meta, audio = make_notes(per_family=1, families=[3])[0]
    ex = tf.train.Example()
    ex.ParseFromString(writers.serialize_note(meta, audio))
    del ex.features.feature["audio"].float_list.value[32_000:]
    rec = tmp_path / "short.tfrecord"
    with tf.io.TFRecordWriter(str(rec)) as w:
        w.write(ex.SerializeToString())
    from nsynth_cnn import evaluate
    for read in (lambda: data.load_arrays(rec),
                 lambda: evaluate.predict_source(lambda x: x, str(rec), batch_size=8)):
        with pytest.raises(schema.DataError) as err:
            read()
        msg = str(err.value)
        assert "audio has 32000 samples, not 64000" in msg and "Is it an NSynth TFRecord" not in msg, msg
        assert "function_node" not in msg


def test_plain_file_named_gz_is_read_as_it_is(tmp_path, tfrecord_file):
    """Compression is told by the file's first bytes (issue 28), not its name: no error, no renaming needed."""
    p = tmp_path / "nsynth-train.tfrecord.gz"
    p.write_bytes(tfrecord_file.read_bytes())
    np.testing.assert_array_equal(data.load_arrays(p)[0], data.load_arrays(tfrecord_file)[0])


def test_audio_files_as_data_are_sent_to_predict(tmp_path, weights, capsys):
    for i in range(3):
        sf.write(str(tmp_path / f"n{i}.wav"), make_notes(per_family=1, families=[i])[0][1], SR)
    sf.write(str(tmp_path / "n.flac"), make_notes(per_family=1, families=[5])[0][1], SR)
    for source, what in ((str(tmp_path / "*.wav"), "3 of its 3 files are audio files"),
                         (str(tmp_path / "n.flac"), "this is an audio file")):
        with pytest.raises(schema.DataError) as err:
            data.load_arrays(source)
        msg = str(err.value)
        assert what in msg and "python -m nsynth_cnn predict FILE" in msg and "download" not in msg.lower(), msg
    rc = main(["evaluate", "--model", "logmel", "--data", str(tmp_path / "*.wav"), "--weights", str(weights),
               "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "predict FILE" in err and len(err.strip().splitlines()) == 1


def test_damaged_tfrecord_still_says_download_again(tmp_path, tfrecord_file):
    p = tmp_path / "cut.tfrecord"
    blob = tfrecord_file.read_bytes()
    p.write_bytes(blob[:len(blob) // 2])
    with pytest.raises(schema.DataError, match="Download that file again"):
        data.load_arrays(p)


def test_predict_on_a_folder_says_how_to_pass_files(tmp_path, weights, capsys):
    folder = tmp_path / "recordings"
    folder.mkdir()
    rc = main(["predict", str(folder), "--model", "logmel", "--weights", str(weights)])
    err = capsys.readouterr().err
    assert rc == 2 and "is a folder, not an audio file" in err and f"{folder}/*.wav" in err
    assert "no such file" not in err


def test_missing_file_still_says_no_such_file(tmp_path):
    with pytest.raises(schema.DataError, match="no such file"):
        load_audio(str(tmp_path / "absent.wav"))


def test_family_names_cover_the_range():
    assert len(NSYNTH_FAMILY_NAMES) == 11   # the 0..10 range the messages state
