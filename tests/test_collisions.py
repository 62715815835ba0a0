"""Nothing lost when runs collide or users slip (issue 28): one run per output folder (a second one is told who
holds it), a dead run's lock and temporary files taken over, an unusable --out refused before any work, a full
disk and Ctrl-C as one clear stop that a re-run resumes, and no lock files piling up in ~/.cache."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import ROOT, run_cli, subprocess_env, train_valid_dir
from nsynth_cnn import data, prepare, runlock, schema, train
from nsynth_cnn.__main__ import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return train_valid_dir(tmp_path_factory.mktemp("collisions"))


DEAD_PID = 4_194_401      # above the highest PID Linux (2**22) and macOS allow, and odd (Windows PIDs are not)


def temp_files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files
                  if ".tmp" in f)


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def no_training(*args, **kwargs):
    pytest.fail("training started although a pre-flight check should have stopped the run")


# ----------------------------------------------------------------------------------------------- two runs
@pytest.mark.slow
def test_second_run_on_a_held_out_is_refused_while_the_first_finishes(workdir, tmp_path):
    out = tmp_path / "weights"
    args = ["train", "--model", "logmel", "--train", workdir / "train.tfrecord", "--valid", workdir / "valid",
            "--out", out, "--epochs", 3, "--steps-per-epoch", 2, "--batch-size", 4, "--xla", "off"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "nsynth_cnn", *map(str, args)], cwd=ROOT,
                                 env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 600
        while (runlock.read_info(out) or {}).get("pid") != first.pid:    # the first run holds --out
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        second = run_cli(*args, timeout=600)
        still_running = first.poll() is None
        first.wait(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    first_log = (tmp_path / "first.log").read_text()
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-3000:]
    lines = error_lines(second.stderr)
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr[-3000:]
    assert f"is in use by another run (PID {first.pid}" in lines[0] and "started 20" in lines[0], lines[0]
    assert "nsynth_cnn train" in lines[0] and "Wait for it to finish" in lines[0] and "another --out" in lines[0]
    assert still_running, "the first run had finished before the second was refused: the test proved nothing"
    assert first.returncode == 0, first_log[-3000:]
    assert (out / "logmel_cnn.keras").is_file() and (out / "logmel_cnn_history.json").is_file()
    assert not (out / runlock.LOCK_NAME).exists() and temp_files(out) == []


# ----------------------------------------------------------------------------------------------- a dead run
def test_stale_lock_is_taken_over_and_temporaries_are_cleaned(tfrecord_file, tmp_path, monkeypatch):
    out = tmp_path / "weights"
    backup = out / ".logmel_cnn.backup"
    backup.mkdir(parents=True)
    (out / ".waveform-base").mkdir()
    pid = DEAD_PID
    (out / runlock.LOCK_NAME).write_text(json.dumps({"pid": pid, "started": "2026-12-01 10:00:00",
                                                     "host": socket.gethostname(),
                                                     "command": "python -m nsynth_cnn train"}))
    leftovers = [out / ".logmel_cnn.best.e0002.tmp.keras", out / "logmel_cnn.tmp.keras",
                 out / "logmel_cnn_history.csv.tmp", backup / "epoch-0003.tmp.weights.h5",
                 out / ".waveform-base" / "waveform_cnn.tmp.keras"]
    for f in leftovers:
        f.write_bytes(b"x" * 1000)
    # kept: a best checkpoint that a committed backup names (the resumed run renames it), the user's own files
    (backup / "epoch-0001.json").write_text(json.dumps({"best_pending": ".logmel_cnn.best.e0001.tmp.keras"}))
    kept = [out / ".logmel_cnn.best.e0001.tmp.keras", backup / "epoch-0001.json", out / "notes.tmp"]
    for f in kept[::2]:
        f.write_bytes(b"y")
    seen = []

    def fake_fit(name, train_data, valid_data, folder, p, **kwargs):
        info = runlock.read_info(out)
        seen.append((name, info["pid"], sorted(info), [f.exists() for f in leftovers], [f.exists() for f in kept]))

    monkeypatch.setattr(train, "fit_network", fake_fit)
    logs = []
    train.run_recipe(str(tfrecord_file), None, str(out), models=("logmel",), epochs=1, log=logs.append)
    assert seen == [("logmel", os.getpid(), ["command", "host", "pid", "started", "what"], [False] * 5, [True] * 3)]
    text = "\n".join(logs)
    assert f"held by a run that did not finish (PID {pid}, started 2026-12-01 10:00:00" in text, text
    assert "removed 5 temporary file(s) an interrupted run left" in text, text
    assert not (out / runlock.LOCK_NAME).exists()                 # released: nothing left behind


# ----------------------------------------------------------------------------------------------- unusable --out
def read_only(monkeypatch, folder):
    """``folder`` behaves like a read-only mount: creating anything in it fails with EROFS."""
    real_open, real_mkdir = os.open, os.mkdir
    inside = lambda p: os.path.abspath(os.fspath(p)).startswith(str(folder) + os.sep)   # noqa: E731

    def ro_open(path, flags, *args, **kwargs):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    def ro_mkdir(path, *args, **kwargs):
        if inside(path):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    monkeypatch.setattr(os, "mkdir", ro_mkdir)


@pytest.mark.parametrize("case", ["file", "below-a-file", "read-only", "read-only-new"])
def test_unusable_out_fails_before_any_work_with_one_line(case, tfrecord_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "fit_network", no_training)
    monkeypatch.setattr(prepare, "prepare_elements", no_training)
    target = tmp_path / "target"
    if case in ("file", "below-a-file"):
        target.write_text("not a folder")
    else:
        target.mkdir()
    out = {"file": target, "below-a-file": target / "weights", "read-only": target,
           "read-only-new": target / "weights"}[case]
    if case.startswith("read-only"):
        read_only(monkeypatch, target)
    want = {"file": "is a file, not a folder", "below-a-file": "cannot be created: part of that path is a file",
            "read-only": "is not writable (Read-only file system)",
            "read-only-new": "cannot be created (Read-only file system)"}[case]
    for argv in (["train", "--model", "logmel", "--train", str(tfrecord_file), "--out", str(out), "--epochs", "1"],
                 ["prepare", "--src", str(tfrecord_file), "--out", str(out)]):
        rc = main(argv)
        err = capsys.readouterr().err
        assert rc == 2, err
        assert error_lines(err) == err.strip().splitlines() and len(error_lines(err)) == 1, err
        assert want in err and repr(str(out)) in err, err
    if case.startswith("read-only"):
        assert os.listdir(target) == []


def test_unreadable_data_fails_before_any_work(tfrecord_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "fit_network", no_training)
    bad = tmp_path / "nsynth-train.tfrecord"
    bad.write_bytes(b"\x00" * 100)                                     # not a TFRecord
    rc = main(["train", "--model", "logmel", "--train", str(bad), "--out", str(tmp_path / "w"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(err)) == 1 and "Download that file again" in err, err
    assert not (tmp_path / "w").exists()                               # nothing was created
    rc = main(["train", "--model", "logmel", "--train", str(tfrecord_file), "--valid", str(tmp_path / "absent"),
               "--out", str(tmp_path / "w"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(err)) == 1 and "does not exist" in err, err


def test_too_little_disk_for_checkpoints_fails_before_training(tfrecord_file, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "fit_network", no_training)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10 ** 12, 10 ** 12 - 10 ** 7,
                                                                                    10 ** 7))
    rc = main(["train", "--model", "logmel", "--train", str(tfrecord_file), "--out", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(err)) == 1, err
    assert "its disk has 10 MB free" in err and "Free" in err and "another --out" in err, err


# ----------------------------------------------------------------------------------------------- a full disk
def full_disk_writer(monkeypatch, error: str, after: int):
    """tf.io.TFRecordWriter that fails like a full disk from its ``after + 1``-th record on."""
    import tensorflow as tf
    real = tf.io.TFRecordWriter
    writes = []

    class Writer:
        def __init__(self, path, *args, **kwargs):
            self._w = real(path, *args, **kwargs)

        def write(self, record):
            writes.append(1)
            if len(writes) > after:
                if error == "oserror":
                    raise OSError(errno.ENOSPC, "No space left on device")
                raise tf.errors.ResourceExhaustedError(None, None, "/x/bucket-00000; No space left on device")
            self._w.write(record)

        def flush(self):
            self._w.flush()

        def close(self):
            self._w.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(tf.io, "TFRecordWriter", Writer)
    return lambda: monkeypatch.setattr(tf.io, "TFRecordWriter", real)


@pytest.mark.parametrize("error", ["oserror", "tensorflow"])
def test_full_disk_during_conversion_is_one_clear_message_and_a_rerun_resumes(error, tfrecord_file, tmp_path,
                                                                             monkeypatch, capsys):
    out = tmp_path / "prepared"
    restore = full_disk_writer(monkeypatch, error, after=6)
    with pytest.raises(schema.DataError) as err:
        prepare.prepare(str(tfrecord_file), str(out), shards=2, chunk_notes=4, log=None)
    msg = str(err.value)
    assert f"the disk holding {out} is full" in msg and "Free space on that disk (about" in msg, msg
    assert "run the same command again: it resumes where it stopped" in msg, msg
    assert temp_files(out) == [] and not (out / runlock.LOCK_NAME).exists()
    # the command line: one line, exit code 2
    rc = main(["prepare", "--src", str(tfrecord_file), "--out", str(tmp_path / "cli"), "--shards", "2"])
    cli_err = capsys.readouterr().err
    assert rc == 2 and len(error_lines(cli_err)) == 1 and "is full" in cli_err, cli_err
    assert "Traceback" not in cli_err and "run the same command again: run" not in cli_err
    # space freed: the same call resumes after the chunk that was done and finishes
    restore()
    logs = []
    stats = prepare.prepare(str(tfrecord_file), str(out), shards=2, chunk_notes=4, log=logs.append)
    assert any("resuming an interrupted run: pass 1 at 4 notes (1 chunks)" in m for m in logs), logs
    assert stats["notes"] == 20 and sorted(data.load_arrays(out)[1]["note_str"]) == sorted(
        data.load_arrays(tfrecord_file)[1]["note_str"])


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_is_one_clear_message(workdir, tmp_path, monkeypatch):
    from nsynth_cnn import checkpoints
    from nsynth_cnn.params import TrainParams

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(checkpoints, "write_text_atomic", full)       # the history CSV, first write of an epoch end
    out = tmp_path / "weights"
    with pytest.raises(schema.DataError) as err:
        train.run_recipe(str(workdir / "train.tfrecord"), None, str(out), models=("logmel",), epochs=1,
                         p=TrainParams(batch_size=4), run=train.RunOptions(steps_per_epoch=1, xla=False, verbose=0),
                         log=lambda m: None)
    msg = str(err.value)
    assert f"the disk holding {out} is full" in msg and f"while training into {out}" in msg, msg
    assert "resumes after the last completed epoch" in msg, msg
    assert not (out / runlock.LOCK_NAME).exists() and temp_files(out) == []


def test_only_a_full_disk_is_translated(tmp_path):
    import tensorflow as tf
    with pytest.raises(tf.errors.ResourceExhaustedError, match="OOM"):          # out of memory: not the disk
        with runlock.stopping(tmp_path, "testing", "run again"):
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
    with pytest.raises(OSError, match="simulated crash"):
        with runlock.stopping(tmp_path, "testing", "run again"):
            raise OSError("simulated crash")
    with pytest.raises(schema.DataError, match="is full"):
        with runlock.stopping(tmp_path, "testing", "run again"):
            raise OSError(errno.ENOSPC, "No space left on device")


# ----------------------------------------------------------------------------------------------- Ctrl-C
class CtrlCInDel:
    """Ctrl-C arriving while Python runs a ``__del__``: a KeyboardInterrupt raised there is printed as "Exception
    ignored" and dropped (the reported run that converted, trained and exited 0 after Ctrl-C). In-process, the
    SIGINT handler is called here directly, so the moment is exact whatever the OS does with a real signal among
    the test run's threads; the subprocess test below sends a real SIGINT."""

    def __del__(self):
        handler = signal.getsignal(signal.SIGINT)
        assert handler is runlock._on_sigint, f"stopping() did not install its SIGINT handler ({handler!r})"
        handler(signal.SIGINT, None)        # raises KeyboardInterrupt here, inside __del__, where Python drops it


def test_a_swallowed_ctrl_c_still_stops(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)
    # as from a terminal: a test run started in the background (`cmd &` without job control) ignores SIGINT, and
    # stopping() deliberately keeps an ignored Ctrl-C ignored (nohup-style runs)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _swallowed_ctrl_c_stops(tmp_path, capsys)
    finally:
        signal.signal(signal.SIGINT, before)


def _swallowed_ctrl_c_stops(tmp_path, capsys):
    before = signal.getsignal(signal.SIGINT)
    for deferred in (False, True):
        with pytest.raises(KeyboardInterrupt):
            with runlock.stopping(tmp_path, "testing", "it resumes"):
                with runlock.stopping(tmp_path, "the inner step", "it resumes", deferred=deferred):
                    CtrlCInDel()
                    time.sleep(0.05)
        assert capsys.readouterr().err.count("interrupted: the inner step stopped; run the same command again: "
                                             "it resumes") == 1
    assert signal.getsignal(signal.SIGINT) is before                           # restored
    runlock.check_interrupt()                                                  # and cleared


SIGINT_IN_CONVERSION = textwrap.dedent("""
    import os, signal, sys, threading, time
    signal.signal(signal.SIGINT, signal.default_int_handler)   # as from a terminal, even if pytest runs in the background
    from nsynth_cnn import prepare
    from nsynth_cnn.__main__ import main

    class CtrlCInDel:
        def __del__(self):
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)   # to the main thread: handled at once
            time.sleep(0.2)                 # the signal handler runs inside __del__, where Python drops exceptions

    real, count = prepare.serialize_prepared, [0]

    def serialize(element, pcm):
        count[0] += 1
        if count[0] == 7:
            CtrlCInDel()
        return real(element, pcm)

    prepare.serialize_prepared = serialize
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.slow
def test_ctrl_c_during_conversion_exits_130_with_the_hint_and_no_temporary_file(tfrecord_file, tmp_path):
    out = tmp_path / "prepared"
    proc = subprocess.run([sys.executable, "-c", SIGINT_IN_CONVERSION, "prepare", "--src", str(tfrecord_file),
                           "--out", str(out)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 130, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert f"interrupted: converting {tfrecord_file} into {out} stopped; run the same command again: it resumes" \
        in proc.stderr, proc.stderr[-3000:]
    assert "Exception ignored" not in proc.stderr and "prepared 20 notes" not in proc.stdout, proc.stderr[-3000:]
    assert temp_files(out) == [] and not (out / runlock.LOCK_NAME).exists()
    assert not (out / "prepared.json").exists()
    logs = []
    stats = prepare.prepare(str(tfrecord_file), str(out), log=logs.append)          # the re-run finishes it
    assert stats["notes"] == 20 and any("resuming an interrupted run" in m for m in logs), logs


# ----------------------------------------------------------------------------------------------- conversions
def test_no_lock_file_is_left_in_the_cache_after_a_conversion(tfrecord_file, tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv(prepare.CACHE_ENV, raising=False)
    src = tmp_path / "data" / "nsynth-train.tfrecord"
    src.parent.mkdir()
    shutil.copy(tfrecord_file, src)
    out = prepare.ensure_mixed(str(src), shards=2, log=None)
    assert out == f"{src}.prepared" and os.path.isfile(os.path.join(out, "prepared.json"))
    # data folder not writable: the copy goes to the cache; still no lock file anywhere afterwards
    shutil.rmtree(out)
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(src.parent))
                        else real_access(p, mode, **kw))
    cached = prepare.ensure_mixed(str(src), shards=2, log=None)
    assert cached.startswith(str(home / ".cache" / "nsynth_cnn" / "prepared"))
    assert not (home / ".cache" / "nsynth_cnn" / "locks").exists()
    left = [os.path.join(d, f) for d, _, files in os.walk(tmp_path) for f in files
            if f == runlock.LOCK_NAME or f.endswith(".lock")]
    assert left == []


HOLD = textwrap.dedent("""
    import sys, time
    from nsynth_cnn import runlock
    with runlock.claim(sys.argv[1], "prepare", log=None):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
""")


@pytest.mark.slow
def test_a_conversion_waits_for_another_run_converting_the_same_data(tfrecord_file, tmp_path):
    src = tmp_path / "data" / "nsynth-train.tfrecord"
    src.parent.mkdir()
    shutil.copy(tfrecord_file, src)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, f"{src}.prepared", "3"], cwd=ROOT, env=subprocess_env(),
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        logs = []
        out = prepare.ensure_mixed(str(src), shards=2, log=logs.append)
        assert holder.wait(timeout=120) == 0
    finally:
        holder.kill()
        holder.wait()
    assert out == f"{src}.prepared" and os.path.isfile(os.path.join(out, "prepared.json"))
    waited = [i for i, m in enumerate(logs) if f"is in use by another run (PID {holder.pid}" in m and "waiting" in m]
    converted = [i for i, m in enumerate(logs) if "converting once to shuffled int16 shards" in m]
    assert len(waited) == 1 and len(converted) == 1 and waited[0] < converted[0], logs    # converted after the wait
