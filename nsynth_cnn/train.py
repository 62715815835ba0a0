"""Training: ``python -m nsynth_cnn train --model {waveform,logmel} --train PATH --valid PATH``.

Checkpoints every epoch (``keras.callbacks.BackupAndRestore``: an interrupted run resumes where it stopped,
losing at most the epoch in progress), early stopping on validation accuracy, warm-up + cosine learning rate,
history appended to ``<out>/<model>_cnn_history.csv`` and written as JSON at the end, final weights written
atomically to ``<out>/<model>_cnn.keras``. Mixed precision on a GPU; optional XLA and MirroredStrategy.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import time

import numpy as np

from . import data
from .params import FAMILIES, TrainParams


def weights_path(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, f"{name}_cnn.keras")


def history_path(out_dir: str, name: str, ext: str = "json") -> str:
    return os.path.join(out_dir, f"{name}_cnn_history.{ext}")


def has_gpu() -> bool:
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    if backend == "torch":
        import torch
        return torch.cuda.is_available()
    return False


def lr_schedule(p: TrainParams, epochs: int):
    """Linear warm-up for ``p.warmup_epochs``, then cosine decay to 1% over the remaining epochs."""
    def fn(epoch, _lr=None):
        if epoch < p.warmup_epochs:
            return p.learning_rate * (epoch + 1) / (p.warmup_epochs + 1)
        t = (epoch - p.warmup_epochs) / max(1, epochs - p.warmup_epochs)
        return p.learning_rate * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
    return fn


def _json_history(csv_path: str) -> dict:
    import pandas as pd
    if not os.path.isfile(csv_path):
        return {}
    df = pd.read_csv(csv_path).drop_duplicates("epoch", keep="last").sort_values("epoch")
    return {c: df[c].tolist() for c in df.columns}


def train(name: str, train_data, valid_data=None, out_dir: str = "weights", p: TrainParams = TrainParams(),
          steps_per_epoch: int | None = None, distribute: str | None = None, xla: bool | None = None,
          mixed_precision: bool | None = None, verbose: int | None = None, cache: bool = True,
          init_from: str | None = None) -> dict:
    """Train one network; returns its history (dict of per-epoch lists). Safe to re-run to resume."""
    import keras
    from . import models
    keras.utils.set_random_seed(p.seed)
    gpu = has_gpu()
    if mixed_precision if mixed_precision is not None else gpu:
        keras.mixed_precision.set_global_policy("mixed_float16")
    os.makedirs(out_dir, exist_ok=True)

    weights = None
    if p.class_balance == "weights":
        counts = data.label_counts(train_data)
        weights = data.balanced_class_weights(counts)
        print("train notes per family: " + ", ".join(f"{f}={c}" for f, c in zip(FAMILIES, counts)))
    train_ds = data.training_dataset(train_data, batch_size=p.batch_size, shuffle_buffer=p.shuffle_buffer,
                                     seed=p.seed, class_weights=weights, cache=cache,
                                     repeat=steps_per_epoch is not None)
    valid_ds = None
    if valid_data is not None:
        valid_ds = data.training_dataset(valid_data, batch_size=p.batch_size, shuffle_buffer=0, seed=p.seed,
                                         cache=cache)

    strategy = None
    if distribute == "mirrored":
        import tensorflow as tf
        strategy = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)")
    scope = strategy.scope() if strategy else contextlib.nullcontext()
    with scope:
        model = models.build_model(name, train=p)
        if init_from:                           # fine-tune: start from a saved model's weights
            from .evaluate import load_trained
            model.set_weights(load_trained(name, init_from).get_weights())
        optimizer = keras.optimizers.AdamW(learning_rate=p.learning_rate, weight_decay=p.weight_decay)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
                      if p.label_smoothing else "sparse_categorical_crossentropy",
                      metrics=["accuracy"], weighted_metrics=[],
                      jit_compile="auto" if xla is None else xla)
    if p.label_smoothing:
        train_ds = train_ds.map(_one_hot)
        valid_ds = valid_ds.map(_one_hot) if valid_ds is not None else None

    monitor = "val_accuracy" if valid_ds is not None else "accuracy"
    best = os.path.join(out_dir, f".{name}_cnn.best.keras")
    backup = os.path.join(out_dir, f".{name}_cnn.backup")
    csv_path = history_path(out_dir, name, "csv")
    if not os.path.isdir(backup) and os.path.exists(csv_path):
        os.remove(csv_path)                 # a fresh run: do not append to an old history
    callbacks = [
        keras.callbacks.BackupAndRestore(backup),
        keras.callbacks.ModelCheckpoint(best, monitor=monitor, save_best_only=True, mode="max"),
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=p.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.LearningRateScheduler(lr_schedule(p, p.epochs)),
        keras.callbacks.CSVLogger(csv_path, append=True),
    ]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2     # one line per epoch in logs
    start = time.time()
    model.fit(train_ds, validation_data=valid_ds, epochs=p.epochs, steps_per_epoch=steps_per_epoch,
              callbacks=callbacks, verbose=verbose)
    wall = time.time() - start
    final = keras.models.load_model(best) if os.path.isfile(best) else model
    _save_atomic(final, name, weights_path(out_dir, name))
    history = _json_history(csv_path)
    history["meta"] = {"model": name, "init_from": init_from, "params": dataclasses.asdict(p), "train_data": str(train_data),
                       "valid_data": str(valid_data), "wall_seconds_last_run": round(wall, 1),
                       "gpu": gpu, "keras_backend": keras.backend.backend()}
    with open(history_path(out_dir, name) + ".tmp", "w") as fh:
        json.dump(history, fh, indent=1)
    os.replace(history_path(out_dir, name) + ".tmp", history_path(out_dir, name))
    if os.path.isfile(best):
        os.remove(best)
    shutil.rmtree(backup, ignore_errors=True)
    return history


def _one_hot(x, y, *w):
    import tensorflow as tf
    return (x, tf.one_hot(y, len(FAMILIES)), *w)


def _save_atomic(model, name: str, path: str) -> None:
    """Save an uncompiled copy (weights + architecture, no optimizer state) via a temp file + rename."""
    from . import models
    clean = models.build_model(name)
    clean.set_weights(model.get_weights())
    tmp = path[:-len(".keras")] + ".tmp.keras"
    clean.save(tmp)
    os.replace(tmp, path)


def add_parser(sub):
    ap = sub.add_parser("train", help="train one network (resumes if interrupted)")
    ap.add_argument("--model", required=True, choices=("waveform", "logmel"))
    ap.add_argument("--train", required=True, help="TFRecord file/glob/folder or JSON+wav folder")
    ap.add_argument("--valid", default=None, help="validation data (early stopping / best checkpoint)")
    ap.add_argument("--out", default="weights", help="folder for <model>_cnn.keras and its history")
    d = TrainParams()
    ap.add_argument("--epochs", type=int, default=d.epochs)
    ap.add_argument("--batch-size", type=int, default=d.batch_size)
    ap.add_argument("--lr", type=float, default=d.learning_rate)
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--patience", type=int, default=d.early_stopping_patience)
    ap.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer)
    ap.add_argument("--class-balance", choices=("weights", "none"), default=d.class_balance)
    ap.add_argument("--steps-per-epoch", type=int, default=None, help="fixed steps (quick runs, tests)")
    ap.add_argument("--no-cache", action="store_true", help="do not cache decoded notes in RAM")
    ap.add_argument("--init-from", default=None, metavar="DIR",
                    help="start from DIR/<model>_cnn.keras (fine-tuning) instead of random weights")
    ap.add_argument("--warmup-epochs", type=int, default=d.warmup_epochs)
    ap.add_argument("--distribute", choices=("mirrored",), default=None,
                    help="tf.distribute.MirroredStrategy over all GPUs of this machine")
    ap.add_argument("--xla", choices=("on", "off", "auto"), default="auto", help="XLA compilation")
    ap.set_defaults(func=_main)


def _main(args):
    p = dataclasses.replace(TrainParams(), epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.lr, seed=args.seed, early_stopping_patience=args.patience,
                            shuffle_buffer=args.shuffle_buffer, class_balance=args.class_balance,
                            warmup_epochs=args.warmup_epochs)
    xla = {"on": True, "off": False, "auto": None}[args.xla]
    import tensorflow as tf
    try:
        hist = train(args.model, args.train, args.valid, args.out, p, args.steps_per_epoch, args.distribute,
                     xla, cache=not args.no_cache, init_from=args.init_from)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise data.translate_tf_error(err, args.train) from None
    acc = hist.get("val_accuracy") or hist.get("accuracy") or [float("nan")]
    print(f"saved {weights_path(args.out, args.model)} (best {'val_' if hist.get('val_accuracy') else ''}"
          f"accuracy {np.nanmax(acc):.3f}) and {history_path(args.out, args.model)}")
    return 0
