"""Training helpers on inputs whose answers are known: the learning-rate schedule, resume, distillation targets,
the recipe's stages."""
from __future__ import annotations

import numpy as np
import pytest

from nsynth_cnn import train
from nsynth_cnn.params import TrainParams






@pytest.mark.parametrize("epochs", [5, 30])
def test_lr_schedule_warms_up_then_decays_to_one_percent(epochs):
    p = TrainParams(learning_rate=1e-3, warmup_epochs=1)
    fn = train.lr_schedule(p, epochs)
    lrs = [fn(e) for e in range(epochs)]
    assert lrs[0] == pytest.approx(5e-4)                                  # (0 + 1) / (1 + 1) of the peak
    assert lrs[1] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert fn(epochs) == pytest.approx(1e-5)


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


def test_distill_targets_mix_the_label_with_the_softened_teacher():
    import keras
    import tensorflow as tf
    p = np.array([0.7, 0.2, 0.1] + [0.0] * 7, np.float32) + 1e-4
    p /= p.sum()
    teacher = keras.Sequential([keras.Input((16,)),
                                keras.layers.Dense(10, kernel_initializer="zeros",
                                                   bias_initializer=keras.initializers.Constant(np.log(p))),
                                keras.layers.Softmax()])                 # the same probabilities p for any note
    x = tf.random.normal((4, 16))
    y = tf.one_hot([2, 2, 5, 9], 10)
    w = tf.constant([1.0, 2.0, 3.0, 4.0])
    for temperature in (1.0, 2.0):
        xo, yo, wo = train.distill_targets(teacher, 0.4, temperature)(x, y, w)
        q = np.exp(np.log(p) / temperature)
        q /= q.sum()
        np.testing.assert_allclose(np.asarray(yo), 0.6 * np.asarray(y) + 0.4 * q, atol=1e-5)
        np.testing.assert_allclose(np.asarray(yo).sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(xo), np.asarray(x))
        np.testing.assert_array_equal(np.asarray(wo), np.asarray(w))
    assert q[1] / q[0] > p[1] / p[0]                                      # T = 2 flattens the teacher's view

