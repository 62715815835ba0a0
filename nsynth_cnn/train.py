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
import warnings

from . import data
from .params import FAMILIES, AugmentParams, LogMelParams, TrainParams, WaveformParams


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
          init_from: str | None = None, watch: str | None = None,
          aug: AugmentParams = AugmentParams(), teacher: str | None = None,
          waveform: WaveformParams = WaveformParams(), logmel: LogMelParams = LogMelParams()) -> dict:
    """Train one network; returns its history (dict of per-epoch lists). Safe to re-run to resume.

    ``teacher``: a folder holding a trained ``logmel_cnn.keras`` whose probabilities on each training note (after
    mixup, when it is on) are mixed into the training targets (knowledge distillation, :func:`distill_targets`).

    ``waveform``: the waveform CNN's front end (e.g. ``WaveformParams().at_rate(12_000)``); unused for the log-mel CNN.
    ``logmel``: the log-mel CNN's front end (e.g. 128 mel bands); unused for the waveform CNN.

    ``watch``: an extra labelled source (e.g. the real NSynth notes) whose accuracy is logged after every
    epoch as ``watch_accuracy``: for the experiment log only, never for checkpoint choice or early stopping.
    """
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
        model = models.build_model(name, train=p, aug=aug, **_front_kwargs(name, waveform, logmel))
        if init_from:                           # fine-tune: start from a saved model's weights
            from .evaluate import WeightsError, load_trained
            start_weights = load_trained(name, init_from).get_weights()
            try:
                model.set_weights(start_weights)
            except ValueError as err:       # another architecture, e.g. a waveform CNN of another --waveform-rate
                raise WeightsError(f"{init_from}/{name}_cnn.keras does not fit the network being trained ({err}); "
                                   "start from weights of the same architecture (same --waveform-rate, --mel-bins).") from None
        optimizer = keras.optimizers.AdamW(learning_rate=p.learning_rate, weight_decay=p.weight_decay)
        soft = bool(p.label_smoothing or p.mixup_alpha or teacher)
        model.compile(optimizer=optimizer,
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing)
                      if soft else "sparse_categorical_crossentropy",
                      metrics=["accuracy"], weighted_metrics=[],
                      jit_compile="auto" if xla is None else xla)
    if soft:
        train_ds = train_ds.map(_one_hot)
        valid_ds = valid_ds.map(_one_hot) if valid_ds is not None else None
    teacher_model = None
    if teacher:
        from .evaluate import load_trained
        teacher_model = load_trained("logmel", teacher)
    train_ds = soft_targets(train_ds, p, teacher_model)

    monitor = "val_accuracy" if valid_ds is not None else "accuracy"
    best = os.path.join(out_dir, f".{name}_cnn.best.keras")
    backup = os.path.join(out_dir, f".{name}_cnn.backup")
    csv_path = history_path(out_dir, name, "csv")
    if not os.path.isdir(backup) and os.path.exists(csv_path):
        os.remove(csv_path)                 # a fresh run: do not append to an old history
    checkpoint = keras.callbacks.ModelCheckpoint(best, monitor=monitor, save_best_only=True, mode="max")
    resumed_best = _best_so_far(csv_path, monitor) if os.path.isdir(backup) and os.path.isfile(best) else None
    if resumed_best is not None:            # a resumed run: only beat the best epoch before the interruption
        checkpoint.best = resumed_best
    callbacks = ([WatchAccuracy(watch)] if watch else []) + [EpochSeconds()]   # timed after the watch
    callbacks += [
        keras.callbacks.BackupAndRestore(backup),
        checkpoint,
        keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=p.early_stopping_patience,
                                      restore_best_weights=True),
        keras.callbacks.LearningRateScheduler(lr_schedule(p, p.epochs)),
        keras.callbacks.CSVLogger(csv_path, append=True),
    ]
    if verbose is None:
        verbose = 1 if sys.stdout.isatty() else 2     # one line per epoch in logs
    start = time.time()
    with warnings.catch_warnings():         # an un-repeated dataset ends each epoch by running out: expected
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        model.fit(train_ds, validation_data=valid_ds, epochs=p.epochs, steps_per_epoch=steps_per_epoch,
                  callbacks=callbacks, verbose=verbose, shuffle=False)   # tf.data shuffles the notes itself
    wall = time.time() - start
    final = keras.models.load_model(best) if os.path.isfile(best) else model
    _save_atomic(final, name, weights_path(out_dir, name), p, aug, waveform, logmel)
    history = _json_history(csv_path)
    history["meta"] = {"model": name, "init_from": init_from, "teacher": teacher, "params": dataclasses.asdict(p),
                       "augment": dataclasses.asdict(aug),
                       name: dataclasses.asdict(waveform if name == "waveform" else logmel),
                       "train_data": str(train_data),
                       "valid_data": str(valid_data), "wall_seconds_last_run": round(wall, 1),
                       "gpu": gpu, "keras_backend": keras.backend.backend()}
    with open(history_path(out_dir, name) + ".tmp", "w") as fh:
        json.dump(history, fh, indent=1)
    os.replace(history_path(out_dir, name) + ".tmp", history_path(out_dir, name))
    if os.path.isfile(best):
        os.remove(best)
    shutil.rmtree(backup, ignore_errors=True)
    return history


def _best_so_far(csv_path: str, monitor: str) -> float | None:
    """Highest ``monitor`` value in an interrupted run's CSV history (None when there is none)."""
    values = [v for v in _json_history(csv_path).get(monitor, []) if v == v]      # drop NaN ("NA") entries
    return max(values, default=None)


def EpochSeconds():
    """Keras callback: each epoch's wall time (training, validation, watch) as ``epoch_seconds`` in its logs, so the
    history's total stays right across an interrupted and resumed run."""
    import keras

    class _EpochSeconds(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._start = time.time()

        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                logs["epoch_seconds"] = round(time.time() - self._start, 1)

    return _EpochSeconds()


def WatchAccuracy(source: str):
    """Keras callback: accuracy on ``source`` (read again each epoch: keep it small) in each epoch's logs."""
    import keras

    from .evaluate import predict_source

    class _Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is not None:
                pred = predict_source(self.model, source)
                logs["watch_accuracy"] = float((pred.predicted == pred.labels).mean())

    return _Watch()


def mixup_batch(x, y, *w, alpha: float, seed: int = 0):
    """Mixup within a batch: each note is mixed with the batch's reversed order, ``lam ~ Beta(alpha, alpha)``
    per note (kept >= 0.5 so the first note dominates); one-hot labels and sample weights mixed alike."""
    import tensorflow as tf
    n = tf.shape(x)[0]
    g1 = tf.random.gamma([n], alpha, seed=seed)
    g2 = tf.random.gamma([n], alpha, seed=seed + 1)
    lam = g1 / (g1 + g2 + 1e-12)
    lam = tf.maximum(lam, 1.0 - lam)
    mix = lambda a: lam[:, None] * a + (1.0 - lam[:, None]) * tf.reverse(a, [0])   # noqa: E731
    out = (mix(x), mix(y))
    if w:
        out += (lam * w[0] + (1.0 - lam) * tf.reverse(w[0], [0]),)
    return out


def distill_targets(teacher, weight: float, temperature: float = 1.0):
    """Batch map for knowledge distillation (Hinton et al., 2015): each one-hot target ``y`` becomes
    ``(1 - weight) * y + weight * q`` with ``q = softmax(log p / temperature)`` the teacher's probabilities ``p``
    for the note, softened. The teacher sees the note the pipeline hands on (clean, or mixed by mixup; its own
    augmentation layers are off at inference); the student sees its own augmented copy and learns which
    families the note resembles, not only its label."""
    import tensorflow as tf

    def fn(x, y, *w):
        p = tf.cast(teacher(x, training=False), tf.float32)
        q = tf.nn.softmax(tf.math.log(tf.maximum(p, 1e-7)) / temperature, axis=-1)
        return (x, (1.0 - weight) * y + weight * q, *w)
    return fn


def soft_targets(ds, p: TrainParams, teacher=None):
    """The training batches' targets: mixup (``p.mixup_alpha``) first, then the teacher's probabilities on the
    **mixed** note, so that teacher and student judge the same input (Beyer et al., 2022, "consistent teaching";
    with ``p.distill_weight = 1`` the student only matches the teacher's function)."""
    if p.mixup_alpha:
        ds = ds.map(lambda *b: mixup_batch(*b, alpha=p.mixup_alpha, seed=p.seed))
    if teacher is not None:
        ds = ds.map(distill_targets(teacher, p.distill_weight, p.distill_temperature))
    return ds


def _one_hot(x, y, *w):
    import tensorflow as tf
    return (x, tf.one_hot(y, len(FAMILIES)), *w)


def _front_kwargs(name: str, waveform: WaveformParams, logmel: LogMelParams) -> dict:
    return {"p": waveform if name == "waveform" else logmel}


def _save_atomic(model, name: str, path: str, p: TrainParams = TrainParams(),
                 aug: AugmentParams = AugmentParams(), waveform: WaveformParams = WaveformParams(),
                 logmel: LogMelParams = LogMelParams()) -> None:
    """Save an uncompiled copy (weights + architecture, no optimizer state) via a temp file + rename; the copy
    is built with the run's settings, so its (inference-time identity) augmentation layers say what it trained with."""
    from . import models
    clean = models.build_model(name, train=p, aug=aug, **_front_kwargs(name, waveform, logmel))
    clean.set_weights(model.get_weights())
    tmp = path[:-len(".keras")] + ".tmp.keras"
    clean.save(tmp)
    os.replace(tmp, path)


def _waveform_rate(text: str) -> int:
    """argparse type of --waveform-rate: a rate the waveform CNN can resample 16 kHz notes down to."""
    import argparse
    try:
        rate = int(text)
        WaveformParams().at_rate(rate).resample_ratio()
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    return rate


def _mel_bins(text: str) -> int:
    """argparse type of --mel-bins: the image must survive the log-mel CNN's four 2 x 2 poolings."""
    import argparse
    try:
        bins = int(text)
    except ValueError:
        bins = 0
    if bins < 16:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of mel bands, at least 16 (e.g. 64, 128)")
    return bins


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
    ap.add_argument("--mixup", type=float, default=d.mixup_alpha, metavar="ALPHA",
                    help="mixup within batches, lam ~ Beta(ALPHA, ALPHA); 0 = off")
    ap.add_argument("--freq-mixstyle", type=float, default=AugmentParams().freq_mixstyle_probability, metavar="P",
                    help="Freq-MixStyle on the log image with probability P per note (features.FreqMixStyle); 0 = off")
    ap.add_argument("--early-release", type=float, default=AugmentParams().early_release_probability, metavar="P",
                    help="share of notes whose note-off moves to a random earlier time (features.RandomRelease); "
                         "0 = off")
    ap.add_argument("--teacher", default=None, metavar="DIR",
                    help="distil DIR/logmel_cnn.keras into this network: targets mix the label with its "
                         "probabilities (TrainParams.distill_weight / distill_temperature)")
    ap.add_argument("--distill-weight", type=float, default=d.distill_weight, metavar="W",
                    help="share of the teacher's softened probabilities in each target (with --teacher)")
    ap.add_argument("--waveform-rate", type=_waveform_rate, default=WaveformParams().target_rate_hz, metavar="HZ",
                    help="rate the waveform CNN downsamples to (8000 or 12000; its filterbank keeps 32 ms "
                         "kernels and 4 ms hops, WaveformParams.at_rate)")
    ap.add_argument("--mel-bins", type=_mel_bins, default=LogMelParams().num_mel_bins, metavar="N",
                    help="mel bands of the log-mel CNN's image (LogMelParams.num_mel_bins; 128 resolves twice as many "
                         "harmonics at about twice the compute)")
    ap.add_argument("--watch", default=None, metavar="PATH",
                    help="labelled notes whose accuracy is logged per epoch (watch_accuracy; not used to choose "
                         "the checkpoint), e.g. ../shared/nsynth-real")
    ap.set_defaults(func=_main)


def _main(args):
    p = dataclasses.replace(TrainParams(), epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.lr, seed=args.seed, early_stopping_patience=args.patience,
                            shuffle_buffer=args.shuffle_buffer, class_balance=args.class_balance,
                            warmup_epochs=args.warmup_epochs, mixup_alpha=args.mixup,
                            distill_weight=args.distill_weight)
    xla = {"on": True, "off": False, "auto": None}[args.xla]
    import tensorflow as tf
    try:
        hist = train(args.model, args.train, args.valid, args.out, p, args.steps_per_epoch, args.distribute,
                     xla, cache=not args.no_cache, init_from=args.init_from,
                     watch=args.watch, teacher=args.teacher,
                     aug=dataclasses.replace(AugmentParams(), freq_mixstyle_probability=args.freq_mixstyle,
                                             early_release_probability=args.early_release),
                     waveform=WaveformParams().at_rate(args.waveform_rate),
                     logmel=dataclasses.replace(LogMelParams(), num_mel_bins=args.mel_bins))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise data.translate_tf_error(err, args.train) from None
    key = "val_accuracy" if args.valid else "accuracy"
    acc = [a for a in hist.get(key, []) if a == a] or [float("nan")]      # drop NaN (CSV "NA") entries
    print(f"saved {weights_path(args.out, args.model)} (best {key} {max(acc):.3f}) and "
          f"{history_path(args.out, args.model)}")
    return 0
