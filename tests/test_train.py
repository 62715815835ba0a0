"""Training helpers on inputs whose answers are known: the learning-rate schedule, resume, distillation targets,
the recipe's stages."""
from __future__ import annotations

import numpy as np
import pytest

from nsynth_cnn import train
from nsynth_cnn.params import TrainParams






@pytest.mark.parametrize("epochs, floor", [(5, TrainParams().min_learning_rate_ratio),
                                           (30, TrainParams().min_learning_rate_ratio), (8, 0.1)])
def test_lr_schedule_warms_up_then_decays_to_the_params_floor(epochs, floor):
    p = TrainParams(learning_rate=1e-3, warmup_epochs=1, min_learning_rate_ratio=floor)
    fn = train.lr_schedule(p, epochs)
    lrs = [fn(e) for e in range(epochs)]
    assert lrs[0] == pytest.approx(5e-4)                                  # (0 + 1) / (1 + 1) of the peak
    assert lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert fn(epochs) == pytest.approx(1e-3 * floor)                      # the floor, read from TrainParams


def test_best_so_far_reads_an_interrupted_runs_history(tmp_path):
    """A run resumed from an old Keras backup keeps the pre-interruption best checkpoint unless a later epoch beats
    it: the best value comes from its CSV history (checkpoints.best_in_history, NaN/NA-safe)."""
    from nsynth_cnn.checkpoints import best_in_history, read_csv_rows
    csv_path = tmp_path / "logmel_cnn_history.csv"
    best = lambda monitor: best_in_history(read_csv_rows(str(csv_path)), monitor)[0]   # noqa: E731
    assert best("val_accuracy") is None
    csv_path.write_text("epoch,accuracy,val_accuracy\n0,0.4,0.44\n1,0.5,0.57\n2,0.6,0.55\n")
    assert best("val_accuracy") == pytest.approx(0.57)
    assert best("accuracy") == pytest.approx(0.6)
    csv_path.write_text("epoch,accuracy,val_accuracy\n0,0.4,NA\n1,0.5,0.51\n")   # an epoch without validation
    assert best("val_accuracy") == pytest.approx(0.51)


def _constant_model(probs):
    """A Keras model giving the same probabilities ``probs`` for any 16-value input."""
    import keras
    return keras.Sequential([keras.Input((16,)),
                             keras.layers.Dense(10, kernel_initializer="zeros",
                                                bias_initializer=keras.initializers.Constant(np.log(probs))),
                             keras.layers.Softmax()])


def _probs(*head):
    p = np.array(list(head) + [0.0] * (10 - len(head)), np.float32) + 1e-4
    return p / p.sum()


def test_distill_targets_mix_the_label_with_the_softened_teacher():
    import tensorflow as tf
    p = _probs(0.7, 0.2, 0.1)
    teacher = _constant_model(p)
    x = tf.random.normal((4, 16))
    y = tf.one_hot([2, 2, 5, 9], 10)
    for temperature in (1.0, 2.0):
        yo = train.distill_targets(y, teacher(x, training=False), 0.4, temperature)
        q = np.exp(np.log(p) / temperature)
        q /= q.sum()
        np.testing.assert_allclose(np.asarray(yo), 0.6 * np.asarray(y) + 0.4 * q, atol=1e-5)
        np.testing.assert_allclose(np.asarray(yo).sum(axis=1), 1.0, atol=1e-5)
    assert q[1] / q[0] > p[1] / p[0]                                      # T = 2 flattens the teacher's view


def test_distillation_loss_targets_are_mixed_in_the_training_step(tmp_path):
    """with_teacher: the loss of a training step on plain (audio, one-hot, weight) batches is the cross-entropy
    against (1 - w) y + w softmax(log p / T), p the teacher's probabilities computed in the step; accuracy still
    compares with the labels; validation loss with the labels; the model stays the plain network (weights,
    backup file, saved file)."""
    import keras
    p, s = _probs(0.7, 0.2, 0.1), _probs(0.1, 0.1, 0.6, 0.1)          # teacher: family 0; student: family 2
    weight, temperature, smoothing = 0.9, 2.0, 0.05
    x = np.random.default_rng(0).normal(size=(4, 16)).astype(np.float32)
    labels = np.array([2, 2, 5, 9])
    y = np.eye(10, dtype=np.float32)[labels]
    w = np.array([1.0, 2.0, 3.0, 4.0], np.float32)
    student = _constant_model(s)
    student.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0),
                    loss=keras.losses.CategoricalCrossentropy(label_smoothing=smoothing),
                    metrics=["accuracy"], weighted_metrics=[])
    plain_weights = len(student.weights)
    assert train.with_teacher(student, _constant_model(p), weight, temperature) is student
    out = student.train_on_batch(x, y, sample_weight=w, return_dict=True)
    q = np.exp(np.log(p) / temperature)
    q /= q.sum()
    target = (1 - weight) * y + weight * q                                 # argmax 0 for every note: not the label
    target = target * (1 - smoothing) + smoothing / 10
    want = np.sum(w * -np.sum(target * np.log(s), axis=1)) / len(w)
    assert out["loss"] == pytest.approx(want, rel=1e-5)
    assert out["accuracy"] == pytest.approx(0.5)                           # against the labels: 2 of 4 are family 2
    plain = np.sum(w * -np.sum((y * (1 - smoothing) + smoothing / 10) * np.log(s), axis=1)) / len(w)
    valid = student.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    assert valid["loss"] == pytest.approx(plain, rel=1e-5)
    assert len(student.weights) == plain_weights                          # the teacher is not part of the model
    student.save_weights(str(tmp_path / "backup.weights.h5"))
    student.save(str(tmp_path / "student.keras"))
    again = keras.models.load_model(str(tmp_path / "student.keras"), compile=False)
    assert type(again) is type(student) and len(again.weights) == plain_weights
    _constant_model(s).load_weights(str(tmp_path / "backup.weights.h5"))



def _train_args(*argv):
    """``python -m nsynth_cnn train --train t ARGV`` parsed by train's own parser."""
    import argparse
    ap = argparse.ArgumentParser()
    train.add_parser(ap.add_subparsers(dest="command"))
    return ap.parse_args(["train", "--train", "t", *argv])


def _params_reaching_the_recipe(monkeypatch, out, *argv) -> TrainParams:
    """The TrainParams that ``train --out OUT ARGV`` hands the recipe (a spy here: nothing is trained)."""
    seen = []

    def spy(*args, p, **kwargs):
        seen.append(p)
        return {}

    monkeypatch.setattr(train, "run_recipe", spy)
    args = _train_args("--out", str(out), *argv)
    assert args.func(args) == 0 and len(seen) == 1
    return seen[0]


def test_train_patience_reaches_early_stopping(monkeypatch, tmp_path):
    import keras
    default = _params_reaching_the_recipe(monkeypatch, tmp_path)
    assert default.early_stopping_patience == TrainParams().early_stopping_patience
    p = _params_reaching_the_recipe(monkeypatch, tmp_path, "--patience", "2")
    assert p.early_stopping_patience == 2
    stopping = [c for c in train._callbacks("logmel", str(tmp_path), p, "val_accuracy", None)
                if isinstance(c, keras.callbacks.EarlyStopping)]
    assert len(stopping) == 1 and stopping[0].patience == 2 and stopping[0].restore_best_weights
    with pytest.raises(SystemExit):
        _train_args("--patience", "0")


def test_train_class_balance_none_gives_batches_without_sample_weights(monkeypatch, tmp_path, tfrecord_file):
    assert _params_reaching_the_recipe(monkeypatch, tmp_path).class_balance == "weights"
    p = _params_reaching_the_recipe(monkeypatch, tmp_path, "--class-balance", "none", "--batch-size", "4")
    assert p.class_balance == "none"
    counts = np.full(10, 2)
    plain, _ = train._datasets(str(tfrecord_file), None, p, counts, cache=False, steps_per_epoch=None)
    weighted, _ = train._datasets(str(tfrecord_file), None, TrainParams(batch_size=4), counts, cache=False,
                                  steps_per_epoch=None)
    assert len(plain.element_spec) == 2                                   # (audio, one-hot target): no weights
    assert len(weighted.element_spec) == 3                                # (audio, one-hot target, sample weight)
    with pytest.raises(SystemExit):
        _train_args("--class-balance", "inverse")
