"""Training: ``python -m nsynth_cnn train --train PATH --valid PATH [--out weights] [--model both|logmel|waveform]``.

:func:`run_recipe` runs the shipped recipe (:data:`nsynth_cnn.params.RECIPE`), the one the notebook's train
mode, ``make train`` and ``make weights`` use: a stage at a time, each a :func:`fit_network` call. A finished
stage is not trained again when the recipe is re-run on the same data (delete its weights to retrain).

:func:`fit_network` trains one network: class-balanced loss weights, early stopping on validation accuracy,
warm-up + cosine learning rate, a checkpoint every epoch (an interrupted run resumes where it stopped, losing at
most the epoch in progress), history appended to ``<out>/<model>_cnn_history.csv`` and written as JSON at the
end, final weights written atomically to ``<out>/<model>_cnn.keras``. Mixed precision on a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import shutil
import sys
import time
import warnings

from . import batches, data, prepare
from .schema import DataError
from .atomic import replace_atomic, write_json_atomic
from .params import AUDIO, FAMILIES, MODEL_NAMES, RECIPE, AugmentParams, CpuCost, Stage, TrainParams
from .weights import TRAIN_OUT_DIR, WeightsError, history_path, load_history, load_trained, weights_path

MIN_FAMILIES_PER_BATCH = 5      # below this (of 10) in the first batches, training stops: the data is not mixed
DIAGNOSTIC_BATCHES = 20         # batches read to measure families_per_batch


def gpu_names() -> list[str]:
    """Names of the GPUs the Keras backend sees (empty on a CPU-only machine)."""
    import keras
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        gpus = tf.config.list_physical_devices("GPU")
        return [tf.config.experimental.get_device_details(g).get("device_name", g.name) for g in gpus]
    if backend == "jax":
        import jax
        return [d.device_kind for d in jax.devices() if d.platform == "gpu"]
    if backend == "torch":
        import torch
        return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return []


def has_gpu() -> bool:
    return bool(gpu_names())


def lr_schedule(p: TrainParams, epochs: int):
    """Linear warm-up for ``p.warmup_epochs``, then cosine decay to ``p.min_learning_rate_ratio`` of the peak over
    the remaining epochs."""
    floor = p.min_learning_rate_ratio

    def fn(epoch, _lr=None):
        if epoch < p.warmup_epochs:
            return p.learning_rate * (epoch + 1) / (p.warmup_epochs + 1)
        t = (epoch - p.warmup_epochs) / max(1, epochs - p.warmup_epochs)
        return p.learning_rate * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0))))
    return fn


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a training run executes, not what it learns (that is :class:`~nsynth_cnn.params.TrainParams`):
    ``steps_per_epoch`` fixed steps (quick runs, tests); ``distribute="mirrored"``: all GPUs of the machine;
    ``xla`` / ``mixed_precision``: None = automatic (mixed precision on a GPU); ``verbose``: Keras' progress
    output (None: a bar on a terminal, a line per epoch in logs); ``cache``: keep decoded notes in RAM;
    ``watch``: an extra labelled source (e.g. the real NSynth notes) whose accuracy is logged after every epoch as
    ``watch_accuracy``, for the experiment log only (never for checkpoint choice or early stopping)."""
    steps_per_epoch: int | None = None
    distribute: str | None = None
    xla: bool | None = None
    mixed_precision: bool | None = None
    verbose: int | None = None
    cache: bool = True
    watch: str | None = None


# ----------------------------------------------------------------------------------------------- the recipe
def stage_params(stage: Stage, p: TrainParams = TrainParams(), epochs: int | None = None) -> TrainParams:
    """The :class:`TrainParams` of one recipe stage (``epochs`` overrides the stage's epoch count)."""
    return dataclasses.replace(
        p, epochs=epochs or stage.epochs,
        learning_rate=p.learning_rate if stage.learning_rate is None else stage.learning_rate,
        warmup_epochs=p.warmup_epochs if stage.warmup_epochs is None else stage.warmup_epochs)


def _stage_dir(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name) if name else out_dir


def _stage_done(stage: Stage, out_dir: str, train_data) -> bool:
    """A stage is done when its network exists and its history says this stage trained it on ``train_data``."""
    folder = _stage_dir(out_dir, stage.out)
    meta = load_history(stage.model, folder).get("meta", {})
    return (os.path.isfile(weights_path(folder, stage.model)) and meta.get("stage") == dataclasses.asdict(stage)
            and meta.get("train_data") == str(train_data))


def run_recipe(train_data, valid_data=None, out_dir: str = TRAIN_OUT_DIR, *, models=MODEL_NAMES,
               epochs: int | None = None, recipe=RECIPE, p: TrainParams = TrainParams(), teacher_dir: str | None = None,
               log=print, run: RunOptions = RunOptions()) -> dict[str, dict]:
    """Train ``models`` with the stages of ``recipe`` that build them; returns ``{model: history}`` of the networks
    written to ``out_dir`` (default ``runs/weights``: the shipped ``weights/`` is replaced only when named).
    ``train_data`` / ``valid_data`` may be a folder holding NSynth's split files side by side: the ``nsynth-train*``
    / ``nsynth-valid*`` files are chosen by name (:func:`nsynth_cnn.splits.select_split`), never the test split;
    with no ``valid_data``, such a folder's valid split is used. ``epochs`` (quick runs) replaces every stage's
    epoch count; ``teacher_dir`` is where a distillation stage finds its log-mel teacher (default ``out_dir``);
    ``run``: how every stage executes (:class:`RunOptions`)."""
    train_data, valid_data = _chosen_splits(train_data, valid_data, log)
    stages = [s for s in recipe if s.model in models]
    from . import runlock          # one run per out_dir, checked before any work; full disk / Ctrl-C: clear stops
    with runlock.training_run(out_dir, train_data, valid_data, networks=len(stages), log=log):
        return _run_stages(stages, train_data, valid_data, out_dir, epochs=epochs, p=p, teacher_dir=teacher_dir,
                           log=log, run=run)


def _run_stages(stages, train_data, valid_data, out_dir, *, epochs, p, teacher_dir, log, run):
    """:func:`run_recipe`'s stages, run while it holds ``out_dir`` (:func:`nsynth_cnn.runlock.training_run`)."""
    needed = _needed_stages(stages, out_dir, train_data)
    if needed:
        log(device_summary(train_data, needed, epochs))
    histories = {}
    for stage in stages:
        folder = _stage_dir(out_dir, stage.out)
        if stage not in needed:
            log(f"{stage.model}: {weights_path(folder, stage.model)} was trained by this stage of the recipe on "
                f"{train_data}; kept (delete it to train again)")
            from .checkpoints import remove_run_files
            remove_run_files(folder, stage.model)     # its run's backup, if a kill came after the final save
        else:
            log(f"{stage.model}: {stage.epochs if epochs is None else epochs} epochs"
                + (f", starting from {stage.init_from}" if stage.init_from else "")
                + (", distilled from the log-mel CNN" if stage.teacher else "") + f" -> {folder}")
            fit_network(stage.model, train_data, valid_data, folder, stage_params(stage, p, epochs),
                        init_from=_stage_dir(out_dir, stage.init_from) if stage.init_from else None,
                        teacher=(teacher_dir or out_dir) if stage.teacher else None, stage=stage, run=run)
        if not stage.out:
            histories[stage.model] = load_history(stage.model, folder)
    for stage in stages:                    # intermediate networks are not part of the result
        if stage.out:
            shutil.rmtree(_stage_dir(out_dir, stage.out), ignore_errors=True)
    return histories


def _chosen_splits(train_data, valid_data, log) -> tuple[str, str | None]:
    """``(train, valid)`` as :func:`nsynth_cnn.splits.select_split` picks them (see :func:`run_recipe`)."""
    from . import splits
    chosen = splits.select_split(train_data, "train")
    if valid_data is not None:
        valid = splits.select_split(valid_data, "valid")
    else:
        valid = None
        if os.path.isdir(os.fspath(train_data)) and chosen != os.fspath(train_data):
            try:
                valid = splits.select_split(train_data, "valid")
            except DataError:
                valid = None
    for what, given, picked in (("train", train_data, chosen), ("valid", valid_data, valid)):
        if picked is not None and picked != (None if given is None else os.fspath(given)):
            log(f"{what} split: {picked}")
    return chosen, valid


def device_summary(train_data=None, stages=(), epochs: int | None = None) -> str:
    """One line saying where training runs: the GPU(s) by name, or the CPU with, when ``stages`` are given, how
    long they will likely take there (:class:`~nsynth_cnn.params.CpuCost`, scaled by the number of cores)."""
    import keras
    names = gpu_names()
    if names:
        return (f"training on {len(names)} GPU(s): {', '.join(names)} (mixed precision, Keras backend "
                f"{keras.backend.backend()})")
    cores = os.cpu_count() or 1
    text = f"training on the CPU ({cores} cores; no GPU visible to {keras.backend.backend()})"
    notes = _estimated_notes(train_data) if train_data is not None else None
    if stages and notes:
        cost = CpuCost()
        per_note = {"logmel": cost.logmel_seconds_per_note, "waveform": cost.waveform_seconds_per_note}
        seconds = sum(notes * (epochs or s.epochs) * per_note[s.model] for s in stages) * cost.measured_cores / cores
        text += (f": about {_duration(seconds)} for {sum(epochs or s.epochs for s in stages)} epochs of ~{notes:,} "
                 "notes, at the rate measured on a 2-core machine; a GPU is much faster")
    return text


def _estimated_notes(train_data) -> int | None:
    """Notes of a source from its size (int16 bytes of its audio), without reading it."""
    try:
        kind, files = data.resolve_source(train_data)
        return max(1, round(prepare.estimate_output_bytes(kind, files) / (2 * AUDIO.num_samples)))
    except (DataError, OSError):
        return None


def _duration(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{max(1, round(seconds / 60))} min"


def _needed_stages(stages, out_dir: str, train_data) -> list[Stage]:
    """Stages to run: those not done, and the stages they start from (an intermediate network is removed once
    the stage that needs it is done, so it is only rebuilt when that stage has to run again)."""
    needed = [s for s in stages if not _stage_done(s, out_dir, train_data)]
    for s in list(needed):
        needed += [t for t in stages if s.init_from and t.out == s.init_from and t not in needed
                   and not os.path.isfile(weights_path(_stage_dir(out_dir, t.out), t.model))]
    return needed


# ----------------------------------------------------------------------------------------------- one network
def fit_network(name: str, train_data, valid_data=None, out_dir: str = TRAIN_OUT_DIR, p: TrainParams = TrainParams(),
                *, init_from: str | None = None, teacher: str | None = None, stage: Stage | None = None,
                aug: AugmentParams = AugmentParams(), run: RunOptions = RunOptions()) -> dict:
    """Train one network; returns its history (dict of per-epoch lists + ``meta``). Safe to re-run to resume.

    ``init_from``: a folder whose ``<name>_cnn.keras`` the network starts from. ``teacher``: a folder holding a
    trained ``logmel_cnn.keras`` whose probabilities are mixed into the targets (:func:`distill_targets`).
    ``run``: how the run executes (:class:`RunOptions`).
    """
    import keras
    keras.utils.set_random_seed(p.seed)
    gpu = has_gpu()
    mixed = run.mixed_precision if run.mixed_precision is not None else gpu
    with dtype_policy("mixed_float16" if mixed else "float32"):     # restored after: the saved file is float32
        teacher_model = load_trained("logmel", teacher) if teacher else None      # fail before any work
        os.makedirs(out_dir, exist_ok=True)
        source = prepare.ensure_mixed(train_data)   # a family-ordered file: converted once into shuffled shards
        counts = _checked_counts(source, p)
        train_ds, valid_ds = _datasets(source, valid_data, p, counts, run.cache, run.steps_per_epoch)
        mixing = _check_mixing(train_ds, counts, p.batch_size)
        model = _compiled_model(name, p, aug, run.distribute, run.xla, init_from, teacher_model)
        csv_path = history_path(out_dir, name, "csv")
        monitor = "val_accuracy" if valid_ds is not None else "accuracy"
        callbacks = _callbacks(name, out_dir, p, monitor, run.watch)
        verbose = run.verbose if run.verbose is not None else 1 if sys.stdout.isatty() else 2   # a line per epoch in logs
        start = time.time()
        with warnings.catch_warnings():         # an un-repeated dataset ends each epoch by running out: expected
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            model.fit(train_ds, validation_data=valid_ds, epochs=p.epochs, steps_per_epoch=run.steps_per_epoch,
                      callbacks=callbacks, verbose=verbose, shuffle=False)   # tf.data shuffles the notes itself
        wall = time.time() - start
        history = _json_history(csv_path)
        history["meta"] = {"model": name, "init_from": init_from, "teacher": teacher,
                           "stage": dataclasses.asdict(stage) if stage else None, "params": dataclasses.asdict(p),
                           "augment": dataclasses.asdict(aug), "train_data": str(train_data), "read_from": str(source),
                           "valid_data": str(valid_data), "train_notes_per_family": dict(zip(FAMILIES, counts.tolist())),
                           "families_per_batch": mixing, "wall_seconds_last_run": round(wall, 1),
                           "gpu": gpu, "mixed_precision": bool(mixed), "keras_backend": keras.backend.backend()}
        history["earlier_stages"] = _earlier_stages(name, init_from)
        _save_final(model, name, out_dir, p, aug, history)
    return history


@contextlib.contextmanager
def dtype_policy(name: str):
    """Keras' global dtype policy set to ``name`` ("float32", "mixed_float16") inside the block, restored after."""
    import keras
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def _earlier_stages(name: str, init_from: str | None) -> list[dict]:
    """The histories of the stages that trained the network this one starts from, oldest first (kept in the final
    history, so the learning curves show every stage after the intermediate folders are removed)."""
    history = load_history(name, init_from) if init_from else {}
    return history.pop("earlier_stages", []) + [history] if history else []


def _checked_counts(train_data, p: TrainParams):
    """Notes per family of the training data; a :class:`DataError` when there is nothing to train on."""
    counts = batches.label_counts(train_data)
    print("train notes per family: " + ", ".join(f"{f}={c}" for f, c in zip(FAMILIES, counts)))
    if counts.sum() == 0:
        raise DataError(f"{train_data}: no usable training notes (empty, or only synth_lead notes). Point "
                             "--train at an NSynth train split; nothing was trained and no weights were changed.")
    missing = [f for f, c in zip(FAMILIES, counts) if c == 0]
    if missing and p.class_balance == "weights":
        print(f"warning: no training notes of {', '.join(missing)}: the network cannot learn "
              f"{'this family' if len(missing) == 1 else 'these families'} (its class weight is 0)", file=sys.stderr)
    return counts


def _datasets(train_data, valid_data, p: TrainParams, counts, cache: bool, steps_per_epoch):
    """``(train, valid)`` batches of ``(audio, one-hot target, sample weight)`` / ``(audio, one-hot target)``. A
    teacher's probabilities are not mixed in here but in the training step (:func:`with_teacher`)."""
    weights = batches.balanced_class_weights(counts) if p.class_balance == "weights" else None
    train_ds = batches.training_dataset(train_data, batch_size=p.batch_size, shuffle_buffer=p.shuffle_buffer,
                                     seed=p.seed, class_weights=weights, cache=cache,
                                     repeat=steps_per_epoch is not None).map(_one_hot)
    valid_ds = None
    if valid_data is not None:
        valid_ds = batches.training_dataset(valid_data, batch_size=p.batch_size, shuffle_buffer=0, seed=p.seed,
                                         cache=cache).map(_one_hot)
    return train_ds, valid_ds


def expected_families(counts, batch_size: int) -> float:
    """Mean number of distinct families in a batch of ``batch_size`` notes drawn at random from ``counts``."""
    import numpy as np
    share = np.asarray(counts, np.float64) / max(1, int(np.sum(counts)))
    return float(np.sum(1.0 - (1.0 - share) ** batch_size))


def _check_mixing(train_ds, counts, batch_size: int) -> float:
    """Mean number of families in the first training batches; a :class:`DataError` when a source that holds
    every family gives batches of fewer than 5 (or half what random batches of this size would hold, for tiny
    batches): a family-ordered file read without shuffling."""
    mixing = batches.families_per_batch(train_ds, batches=DIAGNOSTIC_BATCHES)
    present = int((counts > 0).sum())
    print(f"families per batch (first {DIAGNOSTIC_BATCHES} batches): {mixing:.1f} of {present}")
    if present == len(FAMILIES) and mixing < min(MIN_FAMILIES_PER_BATCH, expected_families(counts, batch_size) / 2):
        raise DataError(f"the first training batches hold {mixing:.1f} families on average (of {present}): "
                             "the data is ordered by family and is not being shuffled. Run `python -m nsynth_cnn "
                             "prepare --src TRAIN --out DIR` and train on DIR, or raise --shuffle-buffer.")
    return round(float(mixing), 2)


def _compiled_model(name: str, p: TrainParams, aug: AugmentParams, distribute: str | None, xla: bool | None,
                    init_from: str | None, teacher=None):
    """The network to train, compiled; with a ``teacher`` (a loaded log-mel CNN) distilled from it in each training
    step (:func:`with_teacher`)."""
    import keras

    from . import models
    strategy = None
    if distribute == "mirrored":
        import tensorflow as tf
        strategy = tf.distribute.MirroredStrategy()
        print(f"MirroredStrategy over {strategy.num_replicas_in_sync} device(s)")
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = models.build_model(name, train=p, aug=aug)
        if init_from:                           # fine-tune: start from a saved model's weights
            start_weights = load_trained(name, init_from).get_weights()
            try:
                model.set_weights(start_weights)
            except ValueError as err:
                raise WeightsError(f"{weights_path(init_from, name)} does not fit the network being trained "
                                   f"({err}); start from weights of the same architecture.") from None
        model.compile(optimizer=keras.optimizers.AdamW(learning_rate=p.learning_rate, weight_decay=p.weight_decay),
                      loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing),
                      metrics=["accuracy"], weighted_metrics=[], jit_compile="auto" if xla is None else xla)
        if teacher is not None:
            with_teacher(model, teacher, p.distill_weight, p.distill_temperature)
    return model


def _callbacks(name: str, out_dir: str, p: TrainParams, monitor: str, watch: str | None) -> list:
    """The run's callbacks; the last, :class:`~nsynth_cnn.checkpoints.TrainingState`, resumes an interrupted
    run and writes the history CSV, the best checkpoint and a backup at each epoch end, each atomically."""
    import keras

    from .checkpoints import TrainingState
    stopping = keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=p.early_stopping_patience,
                                             restore_best_weights=True)
    callbacks = ([WatchAccuracy(watch)] if watch else []) + [EpochSeconds()]   # timed after the watch
    return callbacks + [
        stopping,
        keras.callbacks.LearningRateScheduler(lr_schedule(p, p.epochs)),
        TrainingState(name, out_dir, monitor, early_stopping=stopping),       # last: sees every log entry
    ]


def _save_final(model, name: str, out_dir: str, p: TrainParams, aug: AugmentParams, history: dict) -> None:
    """Write the best epoch's network and the history, then remove the run's checkpoint and backup. A run that
    completed no epoch writes nothing (:class:`DataError`): existing weights are never replaced by an untrained
    network. A best checkpoint that does not load is skipped (with a message) for the last epoch's network."""
    import keras

    from .checkpoints import best_path, remove_run_files
    target = weights_path(out_dir, name)
    if not history.get("epoch"):
        raise DataError(f"{name}: no training epoch was completed, so nothing was saved"
                             + (f"; {target} was not changed." if os.path.isfile(target) else "."))
    best = best_path(out_dir, name)
    final = model
    if os.path.isfile(best):
        try:
            final = keras.models.load_model(best, compile=False)
        except Exception as err:  # noqa: BLE001 - any load failure means the same: the file is unusable
            print(f"{name}: best checkpoint {best} cannot be loaded ({type(err).__name__}: {str(err)[:160]}); "
                  "skipped: saving the last epoch's network instead")
    _save_atomic(final, name, target, p, aug)
    write_json_atomic(history_path(out_dir, name), history)
    remove_run_files(out_dir, name)


def _json_history(csv_path: str) -> dict:
    import pandas as pd
    if not os.path.isfile(csv_path):
        return {}
    df = pd.read_csv(csv_path).drop_duplicates("epoch", keep="last").sort_values("epoch")
    return {c: df[c].tolist() for c in df.columns}


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
    import numpy as np

    class _Watch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs is None:
                return
            right = seen = 0
            for batch in data.iterate(data.nsynth_dataset(source).batch(64), source):
                predicted = np.asarray(self.model.predict_on_batch(batch["audio"])).argmax(axis=1)
                right += int((predicted == batch["label"]).sum())
                seen += len(predicted)
            logs["watch_accuracy"] = right / max(1, seen)

    return _Watch()


def distill_targets(y, teacher_probs, weight: float, temperature: float = 1.0):
    """Knowledge distillation's targets (Hinton et al., 2015): the one-hot targets ``y`` become
    ``(1 - weight) * y + weight * q`` with ``q = softmax(log p / temperature)`` the teacher's probabilities ``p``
    for the same notes, softened; float32, any Keras backend. The student learns which families a note resembles,
    not only its label."""
    from keras import ops
    p = ops.cast(teacher_probs, "float32")
    q = ops.softmax(ops.log(ops.maximum(p, 1e-7)) / temperature, axis=-1)
    return (1.0 - weight) * ops.cast(y, "float32") + weight * q


def with_teacher(model, teacher, weight: float, temperature: float = 1.0):
    """Distil ``teacher`` into the compiled ``model``: in each training step the loss compares the model's output
    with :func:`distill_targets` of the batch's targets and the teacher's probabilities for the same batch, computed
    in that step (frozen, ``training=False``: the teacher sees the clean note, the student its own augmented copy).
    The teacher thus runs where the step runs (the GPU when there is one) instead of in the tf.data pipeline on
    the host's CPU. Metrics and the validation loss still compare with the labels.

    Only this instance's ``compute_loss`` (Keras 3's hook, every backend) is replaced. The teacher is held by that
    function, not tracked as a layer of the model, so the model's weights, its backups and checkpoints and the saved
    network are those of the plain network. Returns ``model``."""
    from keras import ops
    teacher.trainable = False
    plain = type(model).compute_loss

    def compute_loss(x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if training and y is not None:
            y = distill_targets(y, ops.stop_gradient(teacher(x, training=False)), weight, temperature)
        return plain(model, x, y, y_pred, sample_weight, training)
    model.compute_loss = compute_loss
    return model


def _one_hot(x, y, *w):
    import tensorflow as tf
    return (x, tf.one_hot(y, len(FAMILIES)), *w)


def _save_atomic(model, name: str, path: str, p: TrainParams = TrainParams(),
                 aug: AugmentParams = AugmentParams()) -> None:
    """Save an uncompiled float32 copy (weights + architecture, no optimizer state) via a temp file + rename; the
    copy is built with the run's settings, so its (inference-time identity) augmentation layers say what it trained
    with."""
    from . import models
    with dtype_policy("float32"):       # float32 whatever policy trained it: a grader's CPU runs float32 layers
        clean = models.build_model(name, train=p, aug=aug)
    clean.set_weights([w.astype("float32") if w.dtype.kind == "f" else w for w in model.get_weights()])
    from .faults import kill_point
    tmp = path[:-len(".keras")] + ".tmp.keras"
    clean.save(tmp)
    kill_point("final", partial=tmp)
    replace_atomic(tmp, path)


# ----------------------------------------------------------------------------------------------- command line
def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return value


def add_parser(sub):
    ap = sub.add_parser("train", help="train the networks with the shipped recipe (resumes if interrupted)",
                        description="Train with the shipped recipe (nsynth_cnn.params.RECIPE): the log-mel CNN, "
                                    "then the waveform CNN and its distillation from the log-mel CNN.")
    ap.add_argument("--train", required=True,
                    help="NSynth train split: TFRecord file/glob, JSON+wav folder, or a folder holding NSynth's split "
                         "files side by side (its nsynth-train* files are used, never nsynth-test*)")
    ap.add_argument("--valid", default=None,
                    help="validation data (early stopping / best checkpoint); default: the nsynth-valid* files "
                         "beside --train's nsynth-train* files, if any")
    ap.add_argument("--out", default=TRAIN_OUT_DIR,
                    help=f"folder for <model>_cnn.keras and its history (default: {TRAIN_OUT_DIR}; the shipped "
                         "weights/ is replaced only if you name it)")
    ap.add_argument("--model", default="both", choices=("both",) + MODEL_NAMES,
                    help="which networks' stages of the recipe to run (default: both)")
    ap.add_argument("--epochs", type=_positive, default=None,
                    help="epochs of every stage instead of the recipe's (quick runs)")
    ap.add_argument("--teacher", default=None, metavar="DIR",
                    help="folder of the log-mel CNN the waveform CNN is distilled from (default: --out)")
    d = TrainParams()
    ap.add_argument("--batch-size", type=_positive, default=d.batch_size,
                    help="notes per batch (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=d.seed,
                    help="seed of the weights' initialisation, shuffling and augmentation (default: %(default)s)")
    ap.add_argument("--patience", type=_positive, default=d.early_stopping_patience,
                    help="early stopping: a stage ends after this many epochs without a better validation accuracy "
                         "(training accuracy without validation data) and keeps its best epoch's weights "
                         "(default: %(default)s)")
    ap.add_argument("--shuffle-buffer", type=int, default=d.shuffle_buffer,
                    help="notes in the training shuffle buffer, 0 = no shuffle (default: %(default)s)")
    ap.add_argument("--class-balance", choices=("weights", "none"), default=d.class_balance,
                    help="'weights': each note's loss is weighted by the inverse frequency of its family in the "
                         "training data; 'none': every note counts the same (default: %(default)s)")
    ap.add_argument("--steps-per-epoch", type=_positive, default=None, help="fixed steps (quick runs, tests)")
    ap.add_argument("--no-cache", action="store_true", help="do not cache decoded notes in RAM")
    ap.add_argument("--distribute", choices=("mirrored",), default=None,
                    help="tf.distribute.MirroredStrategy over all GPUs of this machine")
    ap.add_argument("--xla", choices=("on", "off", "auto"), default="auto", help="XLA compilation")
    ap.add_argument("--watch", default=None, metavar="PATH",
                    help="labelled notes whose accuracy is logged per epoch (watch_accuracy; not used to choose "
                         "the checkpoint), e.g. ../shared/nsynth-real")
    ap.set_defaults(func=_main)


def _main(args):
    p = dataclasses.replace(TrainParams(), batch_size=args.batch_size, seed=args.seed,
                            early_stopping_patience=args.patience, shuffle_buffer=args.shuffle_buffer,
                            class_balance=args.class_balance)
    import tensorflow as tf
    models = MODEL_NAMES if args.model == "both" else (args.model,)
    try:
        histories = run_recipe(args.train, args.valid, args.out, models=models, epochs=args.epochs, p=p,
                               teacher_dir=args.teacher,
                               run=RunOptions(steps_per_epoch=args.steps_per_epoch, distribute=args.distribute,
                                              xla={"on": True, "off": False, "auto": None}[args.xla],
                                              cache=not args.no_cache, watch=args.watch))
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as err:
        raise data.translate_tf_error(err, args.train) from None
    key = "val_accuracy" if args.valid else "accuracy"
    for name, hist in histories.items():
        acc = [a for a in hist.get(key, []) if a == a] or [float("nan")]      # drop NaN (CSV "NA") entries
        print(f"saved {weights_path(args.out, name)} (best {key} {max(acc):.3f}) and {history_path(args.out, name)}")
    return 0
