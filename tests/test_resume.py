"""Nothing lost, nothing stuck: training killed (SIGKILL) at any moment resumes; a run that trains nothing
changes no weights.

The kill test runs the real CLI in subprocesses (3 epochs x 2 steps of 4 tiny notes) and kills each at a chosen
moment through the test hook ``NSYNTH_TEST_KILL_DURING`` (see :mod:`nsynth_cnn.faults`): while the best
checkpoint is written, while the backup is written, during an epoch, and while the final network is written.
The runs follow each other in one weights folder, so each also tests resuming from the one before.
"""
from __future__ import annotations

import json
import os
import re
import signal

import pytest

from conftest import make_notes, run_cli, subprocess_env, train_valid_dir
from nsynth_cnn import schema, writers

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]   # CLI subprocesses, training

EPOCHS = 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return train_valid_dir(tmp_path_factory.mktemp("resume"))


def _train(workdir, out, kill=None):
    env = subprocess_env(**({"NSYNTH_TEST_KILL_DURING": kill} if kill else {}))
    if not kill:
        env.pop("NSYNTH_TEST_KILL_DURING", None)
    proc = run_cli("train", "--model", "logmel", "--train", workdir / "train.tfrecord", "--valid", workdir / "valid",
                   "--out", out, "--epochs", EPOCHS, "--steps-per-epoch", 2, "--batch-size", 4, "--xla", "off",
                   env=env, timeout=900)
    log = proc.stdout + proc.stderr
    if kill:
        assert proc.returncode == -signal.SIGKILL, f"not killed at {kill}:\n{log[-3000:]}"
    else:
        assert proc.returncode == 0, log[-3000:]
    return proc.stdout, log


def _epochs_run(stdout: str) -> list[int]:
    """The epochs (1-based) this run started, from Keras' ``Epoch k/N`` lines."""
    return [int(k) for k in re.findall(rf"^Epoch (\d+)/{EPOCHS}$", stdout, re.M)]


def _csv_epochs(out) -> list[int]:
    from nsynth_cnn.checkpoints import read_csv_rows
    return [r["epoch"] for r in read_csv_rows(str(out / "logmel_cnn_history.csv"))]


def test_training_killed_at_any_moment_resumes_and_finishes(workdir):
    out = workdir / "weights"
    backup = out / ".logmel_cnn.backup"
    # What the old code left behind after kills (issue): a 0-byte Keras backup, an empty best checkpoint, a
    # 0-byte final temp file, and an old run's history. None of it may block a run.
    backup.mkdir(parents=True)
    (backup / "latest.weights.h5").write_bytes(b"")
    (backup / "training_metadata.json").write_text('{"epoch": 2, "batch": 0}')
    (out / ".logmel_cnn.best.keras").write_bytes(b"")
    (out / "logmel_cnn.tmp.keras").write_bytes(b"")
    (out / "logmel_cnn_history.csv").write_text("epoch,accuracy,val_accuracy\n0,0.1,0.1\n1,0.2,0.2\n")

    # 1. Killed while the best checkpoint of epoch 1 is written (epoch 1 always improves on nothing).
    stdout, log = _train(workdir, out, kill="best:1")
    assert "latest.weights.h5 cannot be loaded" in stdout and "skipped" in stdout, log[-3000:]
    assert "training starts again from epoch 1" in stdout
    assert _epochs_run(stdout) == [1]
    assert not (out / ".logmel_cnn.best.keras").exists(), "the empty old best checkpoint was kept"
    assert not (out / "logmel_cnn.tmp.keras").exists() and not (backup / "latest.weights.h5").exists()
    assert (out / ".logmel_cnn.best.e0001.tmp.keras").stat().st_size > 0     # the hook cut it half-way

    # 2. Nothing was committed: a fresh start; killed while the backup of epoch 2 is written.
    stdout, log = _train(workdir, out, kill="backup:2")
    assert "resuming" not in stdout and _epochs_run(stdout) == [1, 2], log[-3000:]
    assert not (out / ".logmel_cnn.best.e0001.tmp.keras").exists(), "leftover temp file"
    assert (out / ".logmel_cnn.best.keras").is_file()
    assert list(backup.glob("*.tmp*")), "the hook did not cut the backup's temp file"

    # 3. Resumes after epoch 1 (the backup of epoch 2 never completed); killed during epoch 3.
    stdout, log = _train(workdir, out, kill="epoch:3")
    assert f"resuming after epoch 1 of {EPOCHS}" in stdout and _epochs_run(stdout) == [2, 3], log[-3000:]
    assert not list(backup.glob("*.tmp*")) and _csv_epochs(out) == [0, 1]

    # A backup damaged on disk (the old failure: a 0-byte weights file) and a damaged best checkpoint are
    # skipped with a message: the run falls back to the backup before it.
    (backup / "epoch-0002.weights.h5").write_bytes(b"")
    (out / ".logmel_cnn.best.keras").write_bytes(b"PK\x03\x04 not a whole zip")

    # 4. Resumes after epoch 1 again; killed while the final network is written.
    stdout, log = _train(workdir, out, kill="final")
    assert "epoch-0002.json cannot be loaded" in stdout and "skipped" in stdout, log[-3000:]
    assert "best checkpoint" in stdout and "is damaged" in stdout
    assert f"resuming after epoch 1 of {EPOCHS}" in stdout and _epochs_run(stdout) == [2, 3]
    assert not (out / "logmel_cnn.keras").exists() and (out / "logmel_cnn.tmp.keras").stat().st_size > 0
    assert _csv_epochs(out) == [0, 1, 2]

    # 5. All epochs were done: nothing left to train, the final network and history are written.
    stdout, log = _train(workdir, out)
    assert f"resuming after epoch {EPOCHS} of {EPOCHS}" in stdout and _epochs_run(stdout) == [], log[-3000:]
    assert "saved" in stdout
    assert sorted(os.listdir(out)) == ["logmel_cnn.keras", "logmel_cnn_history.csv", "logmel_cnn_history.json"]
    hist = json.loads((out / "logmel_cnn_history.json").read_text())
    assert hist["epoch"] == [0, 1, 2] and len(hist["val_accuracy"]) == 3
    assert _csv_epochs(out) == [0, 1, 2]
    import keras

    import nsynth_cnn  # noqa: F401  (registers the custom layers)
    model = keras.models.load_model(out / "logmel_cnn.keras", compile=False)
    assert tuple(model.output_shape) == (None, 10)


def test_training_on_no_usable_notes_changes_no_weights(tmp_path, capsys):
    """Only synth_lead notes (which every reader drops): exit code 2, a one-line error, weights untouched."""
    from nsynth_cnn.__main__ import main
    src = tmp_path / "synth_lead_only"
    writers.write_jsonwav(str(src), make_notes(per_family=3, families=[9]))
    out = tmp_path / "weights"
    out.mkdir()
    old = b"previously trained weights \x00\x01"
    (out / "logmel_cnn.keras").write_bytes(old)
    rc = main(["train", "--model", "logmel", "--train", str(src), "--out", str(out), "--epochs", "1",
               "--steps-per-epoch", "1", "--batch-size", "2", "--xla", "off"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert err.startswith("error:") and "\n" not in err and "no usable training notes" in err, err
    assert (out / "logmel_cnn.keras").read_bytes() == old
    assert sorted(os.listdir(out)) == ["logmel_cnn.keras"]


def test_a_run_that_completed_no_epoch_writes_no_weights(tmp_path):
    """The last guard: whatever stopped the run, no completed epoch means no new final file."""
    from nsynth_cnn import train
    from nsynth_cnn.params import AugmentParams, TrainParams
    old = b"previously trained weights"
    (tmp_path / "logmel_cnn.keras").write_bytes(old)
    with pytest.raises(schema.DataError, match="no training epoch was completed"):
        train._save_final(None, "logmel", str(tmp_path), TrainParams(), AugmentParams(), {"meta": {}})
    assert (tmp_path / "logmel_cnn.keras").read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["logmel_cnn.keras"]


def _tiny_model():
    import keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def test_backup_restores_weights_optimizer_state_epoch_and_early_stop(tmp_path):
    import keras
    import numpy as np

    from nsynth_cnn.checkpoints import TrainingState, read_csv_rows
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(16, 4)).astype("float32"), np.eye(3, dtype="float32")[rng.integers(0, 3, 16)]

    class Hook(keras.callbacks.Callback):
        def __init__(self, begin=None, end=None, train_begin=None):
            super().__init__()
            self.begin, self.end, self.train_begin, self.epochs = begin, end, train_begin, []

        def on_train_begin(self, logs=None):
            if self.train_begin:
                self.train_begin(self.model)

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)
            if self.begin:
                self.begin(epoch)

        def on_epoch_end(self, epoch, logs=None):
            if self.end:
                self.end(self.model, epoch)

    def interrupt(epoch):
        if epoch == 2:
            raise RuntimeError("interrupted")

    first = _tiny_model()
    with pytest.raises(RuntimeError, match="interrupted"):
        first.fit(x, y, batch_size=8, epochs=4, verbose=0,
                  callbacks=[Hook(begin=interrupt), TrainingState("tiny", str(tmp_path), "accuracy")])
    seen, messages = {}, []
    restored = Hook(train_begin=lambda m: seen.update(weights=m.get_weights(), step=int(m.optimizer.iterations)))
    second = _tiny_model()
    second.fit(x, y, batch_size=8, epochs=4, verbose=0,
               callbacks=[TrainingState("tiny", str(tmp_path), "accuracy", log=messages.append), restored])
    assert restored.epochs == [2, 3] and messages == [f"tiny: resuming after epoch 2 of 4 (backup in "
                                                      f"{tmp_path / '.tiny_cnn.backup'})"]
    assert seen["step"] == int(first.optimizer.iterations) == 4             # the optimizer's state came back
    for a, b in zip(seen["weights"], first.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert [r["epoch"] for r in read_csv_rows(str(tmp_path / "tiny_cnn_history.csv"))] == [0, 1, 2, 3]
    assert (tmp_path / ".tiny_cnn.best.keras").is_file()

    # A run that early stopping ended is finished: resuming it trains nothing more.
    def stop(model, epoch):
        model.stop_training = True
    stopped = tmp_path / "stopped"
    _tiny_model().fit(x, y, batch_size=8, epochs=5, verbose=0,
                      callbacks=[Hook(end=stop), TrainingState("tiny", str(stopped), "accuracy")])
    again, messages = Hook(), []
    _tiny_model().fit(x, y, batch_size=8, epochs=5, verbose=0,
                      callbacks=[TrainingState("tiny", str(stopped), "accuracy", log=messages.append), again])
    assert again.epochs == [] and "stopped early after epoch 1" in messages[0]


def test_history_csv_round_trip_and_cut_lines(tmp_path):
    from nsynth_cnn.checkpoints import csv_text, read_csv_rows
    rows = [{"epoch": 0, "loss": 2.5, "val_accuracy": 0.1}, {"epoch": 1, "loss": 2.0, "watch_accuracy": 0.3}]
    path = tmp_path / "h.csv"
    path.write_text(csv_text(rows))
    assert path.read_text().splitlines()[0] == "epoch,loss,val_accuracy,watch_accuracy"
    back = read_csv_rows(str(path))
    assert back == [{"epoch": 0, "loss": 2.5, "val_accuracy": 0.1, "watch_accuracy": None},
                    {"epoch": 1, "loss": 2.0, "val_accuracy": None, "watch_accuracy": 0.3}]
    path.write_text(path.read_text() + "2,1.5,0.")          # a line cut by a kill
    assert [r["epoch"] for r in read_csv_rows(str(path))] == [0, 1]
