"""Training state that survives a kill at any instant (used by :func:`nsynth_cnn.train.fit_network`).

Files of a run of network NAME in its weights folder OUT, while it trains:

``.NAME_cnn.backup/epoch-NNNN.weights.h5``
    the network's weights and the optimizer's state after NNNN completed epochs.
``.NAME_cnn.backup/epoch-NNNN.json``
    the epoch count, the best-so-far value, the early-stopping state and the history row of every completed
    epoch. Written after the weights file it names, it is what commits a backup.
``.NAME_cnn.best.keras``
    the network of the best epoch so far (``val_accuracy``, or ``accuracy`` without validation data).
``NAME_cnn_history.csv``
    one row per completed epoch; rewritten from the backup on resume, so rows of an epoch that was interrupted
    (or of a backup that could not be used) disappear.

Every file is written under a temporary name (holding ``.tmp``) and renamed into place (``os.replace``, atomic
on POSIX and Windows), so a kill leaves either the old file or the new one, never a part. A new best network is
renamed into place only after the backup of its epoch is committed (a resumed run finishes that rename). The two
latest backups are kept: one that does not load (damaged on disk, or from another network) is skipped with a
message, falling back to the one before, or to a fresh start. Temporary leftovers are removed when a run starts.

The kill tests (tests/test_resume.py) stop the process at each of these writes through
:func:`nsynth_cnn.faults.kill_point` (a no-op unless they ask for it).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import zipfile

import keras

from .faults import kill_point
from .atomic import fsync_file, replace_atomic, write_json_atomic, write_text_atomic
from .runlock import check_interrupt
from .weights import history_path

STATE_FORMAT = 1
KEEP_BACKUPS = 2
_STATE_RE = re.compile(r"^epoch-(\d+)\.json$")


def best_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f".{name}_cnn.best.keras")


def backup_dir(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f".{name}_cnn.backup")




def csv_text(rows: list[dict]) -> str:
    """History rows as CSV in the layout of ``keras.callbacks.CSVLogger``: ``epoch`` then the sorted keys
    (``NA`` where an epoch lacks one)."""
    keys = sorted({k for r in rows for k in r} - {"epoch"})
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["epoch"] + keys)
    for r in rows:
        writer.writerow([r["epoch"]] + [_csv_value(r.get(k)) for k in keys])
    return out.getvalue()


def _csv_value(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "NA"
    return v


def read_csv_rows(path: str) -> list[dict]:
    """Rows of a history CSV (``epoch`` int, other values float or None); unreadable rows are left out."""
    if not os.path.isfile(path):
        return []
    with open(path, newline="") as fh:
        lines = list(csv.reader(fh))
    if not lines or not lines[0] or lines[0][0] != "epoch":
        return []
    header, rows = lines[0], []
    for line in lines[1:]:
        if len(line) != len(header):
            continue                      # e.g. a line cut by a kill while the old CSVLogger appended it
        try:
            row = {"epoch": int(line[0])}
            row.update((k, None if v in ("", "NA", "nan") else float(v)) for k, v in zip(header[1:], line[1:]))
        except ValueError:
            continue
        rows.append(row)
    return rows


def best_in_history(rows: list[dict], monitor: str) -> tuple[float | None, int | None]:
    """``(value, epoch)`` of the highest ``monitor`` value in history rows, epochs without it (``NA``) or NaN
    skipped; ``(None, None)`` when there is none."""
    values = [(r[monitor], r["epoch"]) for r in rows if _number(r.get(monitor)) is not None
              and not math.isnan(r[monitor])]
    return max(values, default=(None, None))


def _number(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _short(err: BaseException) -> str:
    return f"{type(err).__name__}: {' '.join(str(err).split())[:160]}"


class TrainingState(keras.callbacks.Callback):
    """Resume an interrupted run (``on_train_begin``) and, at each epoch end, write the history, the best
    checkpoint and a backup, each atomically. Put it LAST in the callback list, so that the epoch's logs hold
    what the other callbacks add (learning rate, timings) and early stopping has decided before the backup."""

    def __init__(self, name: str, out_dir: str, monitor: str, early_stopping=None, log=print):
        super().__init__()
        self.name, self.out_dir, self.monitor = name, out_dir, monitor
        self.early_stopping, self.log = early_stopping, log
        self.backup = backup_dir(out_dir, name)
        self.best_file = best_path(out_dir, name)
        self.csv_path = history_path(out_dir, name, "csv")
        self.rows: list[dict] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self._epoch = 0

    # ------------------------------------------------------------------------------------------- resume
    def on_train_begin(self, logs=None):
        os.makedirs(self.out_dir, exist_ok=True)
        state, kept = self._load_newest_state()
        if state is None:
            self._fresh_start()
        else:
            self._resume(state)
        self._remove_temporaries()
        self._prune(kept)

    def _load_newest_state(self):
        """The newest backup that loads (its state dict and the files to keep), after loading its weights into
        the model; ``(None, [])`` when there is none."""
        candidates = self._candidates()
        if not candidates:
            return None, []
        model = self.model
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        variables = list(model.weights) + (list(model.optimizer.variables) if model.optimizer is not None else [])
        snapshot = [v.numpy() for v in variables]
        for label, load in candidates:
            try:
                state, files = load()
            except Exception as err:  # noqa: BLE001 - any failure means the same: this backup is unusable
                self.log(f"{self.name}: backup {label} cannot be loaded ({_short(err)}); skipped")
                continue
            return state, files
        for v, value in zip(variables, snapshot):     # a backup that failed half-way may have loaded a part
            v.assign(value)
        self.log(f"{self.name}: no usable backup in {self.backup}: training starts again from epoch 1")
        return None, []

    def _candidates(self):
        """``(label, load)`` for each backup, newest first; ``load()`` loads it and returns (state, files)."""
        if not os.path.isdir(self.backup):
            return []
        found = []
        for entry in os.listdir(self.backup):
            m = _STATE_RE.match(entry)
            if m:
                found.append((int(m.group(1)), entry))
        out = [(os.path.join(self.backup, f), self._loader(f)) for _, f in sorted(found, reverse=True)]
        legacy = os.path.join(self.backup, "latest.weights.h5")   # keras.callbacks.BackupAndRestore's backup
        if os.path.exists(legacy) or os.path.exists(os.path.join(self.backup, "training_metadata.json")):
            out.append((legacy, self._legacy_loader))
        return out

    def _loader(self, state_file: str):
        def load():
            with open(os.path.join(self.backup, state_file)) as fh:
                state = json.load(fh)
            if state.get("format") != STATE_FORMAT:
                raise ValueError(f"unknown backup format {state.get('format')!r}")
            if not isinstance(state.get("epochs_done"), int) or not isinstance(state.get("history"), list):
                raise ValueError("incomplete backup state")
            self.model.load_weights(os.path.join(self.backup, state["weights"]))
            return state, [state_file, state["weights"]]
        return load

    def _legacy_loader(self):
        with open(os.path.join(self.backup, "training_metadata.json")) as fh:
            done = int(json.load(fh)["epoch"])
        self.model.load_weights(os.path.join(self.backup, "latest.weights.h5"))
        rows = [r for r in read_csv_rows(self.csv_path) if r["epoch"] < done]
        rows = list({r["epoch"]: r for r in rows}.values())             # the last row of each epoch
        best, best_epoch = best_in_history(rows, self.monitor)
        return {"format": STATE_FORMAT, "epochs_done": done, "best": best, "best_epoch": best_epoch,
                "best_pending": None, "stopped": False, "early_stopping": None, "history": rows}, \
            ["latest.weights.h5", "training_metadata.json"]         # replaced by the first new backup

    def _fresh_start(self):
        self.rows, self.best, self.best_epoch = [], None, None
        for path in (self.csv_path, self.best_file):    # an old run's history and best network
            if os.path.exists(path):
                os.remove(path)

    def _resume(self, state: dict):
        done = int(state["epochs_done"])
        self.rows = [r for r in state["history"] if r["epoch"] < done]
        if self.rows:
            write_text_atomic(self.csv_path, csv_text(self.rows))
        elif os.path.exists(self.csv_path):
            os.remove(self.csv_path)
        pending = state.get("best_pending")
        if pending and os.path.isfile(os.path.join(self.out_dir, pending)):   # committed, not yet renamed
            os.replace(os.path.join(self.out_dir, pending), self.best_file)
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
        if os.path.isfile(self.best_file) and not self._zip_ok(self.best_file):
            self.log(f"{self.name}: best checkpoint {self.best_file} is damaged; skipped (the next epochs "
                     "choose a new one)")
            os.remove(self.best_file)
        if not os.path.isfile(self.best_file):
            self.best, self.best_epoch = None, None       # any epoch from here on is the best one we have
        es = self.early_stopping
        if es is not None and state.get("early_stopping"):
            es.wait = int(state["early_stopping"]["wait"])
            es.best = state["early_stopping"]["best"]
            es.best_epoch = int(state["early_stopping"]["best_epoch"])
        epochs = int(self.params.get("epochs", done)) if self.params else done
        if state.get("stopped"):
            self.log(f"{self.name}: resuming a run that stopped early after epoch {done}: nothing left to train")
            self.model._initial_epoch = max(done, epochs)
        else:
            self.log(f"{self.name}: resuming after epoch {done} of {epochs} (backup in {self.backup})")
            self.model._initial_epoch = done

    @staticmethod
    def _zip_ok(path: str) -> bool:
        try:
            with zipfile.ZipFile(path) as zf:
                return zf.testzip() is None
        except (OSError, zipfile.BadZipFile, EOFError):
            return False

    def _remove_temporaries(self):
        """Temporary files of an interrupted write (after :meth:`_resume` has finished a committed best
        checkpoint's rename): in the backup folder, and the run's ones in the weights folder."""
        prefixes = (f".{self.name}_cnn.best.", f"{self.name}_cnn.", f"{self.name}_cnn_history.")
        for entry in os.listdir(self.out_dir):
            if entry.startswith(prefixes) and ".tmp" in entry and os.path.isfile(os.path.join(self.out_dir, entry)):
                os.remove(os.path.join(self.out_dir, entry))
        if os.path.isdir(self.backup):
            for entry in os.listdir(self.backup):
                if ".tmp" in entry:
                    os.remove(os.path.join(self.backup, entry))

    # ------------------------------------------------------------------------------------------- save
    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            kill_point("epoch", self._epoch + 1)
        check_interrupt()             # a Ctrl-C that Python swallowed (e.g. inside a __del__) stops here

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {"epoch": int(epoch)}
        row.update((k, _number(v)) for k, v in logs.items() if _number(v) is not None)
        self.rows = [r for r in self.rows if r["epoch"] < epoch] + [row]
        write_text_atomic(self.csv_path, csv_text(self.rows))
        value = row.get(self.monitor)
        pending = None
        if value is not None and not math.isnan(value) and (self.best is None or value > self.best):
            pending = f".{self.name}_cnn.best.e{epoch + 1:04d}.tmp.keras"
            self.model.save(os.path.join(self.out_dir, pending))
            kill_point("best", epoch + 1, os.path.join(self.out_dir, pending))
            fsync_file(os.path.join(self.out_dir, pending))
            self.best, self.best_epoch = value, int(epoch)
        files = self._commit(epoch + 1, pending)
        if pending:
            os.replace(os.path.join(self.out_dir, pending), self.best_file)
        self._prune(files)
        check_interrupt()             # after the epoch is saved

    def _commit(self, done: int, pending: str | None) -> list[str]:
        """Write the backup after ``done`` epochs: weights + optimizer state, then the state file naming them."""
        os.makedirs(self.backup, exist_ok=True)
        weights = f"epoch-{done:04d}.weights.h5"
        tmp = os.path.join(self.backup, f"epoch-{done:04d}.tmp.weights.h5")
        self.model.save_weights(tmp)                  # the model's variables and its optimizer's
        kill_point("backup", done, tmp)
        replace_atomic(tmp, os.path.join(self.backup, weights))
        es = self.early_stopping
        state = {"format": STATE_FORMAT, "model": self.name, "epochs_done": done, "weights": weights,
                 "monitor": self.monitor, "best": self.best, "best_epoch": self.best_epoch,
                 "best_pending": pending, "stopped": bool(getattr(self.model, "stop_training", False)),
                 "early_stopping": None if es is None or es.best is None else
                 {"wait": int(es.wait), "best": float(es.best), "best_epoch": int(es.best_epoch)},
                 "history": self.rows}
        state_file = f"epoch-{done:04d}.json"
        write_json_atomic(os.path.join(self.backup, state_file), state, indent=None)
        return [state_file, weights]

    def _prune(self, newest: list[str]):
        """Keep the newest backup and the one before it (found by its state file); remove everything else."""
        if not os.path.isdir(self.backup):
            return
        keep = set(newest)
        states = sorted((int(m.group(1)), e) for e in os.listdir(self.backup) if (m := _STATE_RE.match(e)))
        newest_n = next((n for n, e in states if e in keep), None)
        older = [e for n, e in states if newest_n is not None and n < newest_n]
        for e in older[len(older) - (KEEP_BACKUPS - 1):]:
            keep.add(e)
            keep.add(e[:-len(".json")] + ".weights.h5")
        for entry in os.listdir(self.backup):
            if entry not in keep:
                path = os.path.join(self.backup, entry)
                if os.path.isdir(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    os.remove(path)


def remove_run_files(out_dir: str, name: str) -> None:
    """Remove a finished run's best checkpoint and backup."""
    if os.path.isfile(best_path(out_dir, name)):
        os.remove(best_path(out_dir, name))
    shutil.rmtree(backup_dir(out_dir, name), ignore_errors=True)
