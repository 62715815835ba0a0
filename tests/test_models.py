"""Model I/O contract, inference determinism, save -> load, and loading the saved file under JAX."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from conftest import N, ROOT, subprocess_env
from nsynth_cnn import features as F
from nsynth_cnn import models

NAMES = models.MODEL_NAMES


@pytest.fixture(scope="module")
def tf_predictions(built_models, probe_audio):
    return {n: np.asarray(m.predict(probe_audio, verbose=0)) for n, m in built_models.items()}


@pytest.fixture(scope="module")
def saved(tmp_path_factory, built_models):
    folder = tmp_path_factory.mktemp("saved")
    paths = {}
    for name, model in built_models.items():
        paths[name] = folder / f"{name}_cnn.keras"
        model.save(paths[name])
    return paths


def test_both_model_names_and_unknown_name():
    assert set(NAMES) == {"waveform", "logmel"}
    with pytest.raises(ValueError, match="unknown model"):
        models.build_model("resnet")


@pytest.mark.parametrize("name", NAMES)
def test_io_contract(built_models, tf_predictions, probe_audio, name):
    model = built_models[name]
    assert tuple(model.input_shape) == (None, N)
    assert tuple(model.output_shape) == (None, 10)
    probs = tf_predictions[name]
    assert probs.shape == (len(probe_audio), 10) and probs.dtype == np.float32
    assert np.all(np.isfinite(probs)), "NaN/inf output (the silent probe must not produce 0/0)"
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    one = np.asarray(model(probe_audio[:1], training=False))
    assert one.shape == (1, 10)
    np.testing.assert_allclose(one[0], probs[0], atol=1e-5)   # batch size does not change a note's output


@pytest.mark.parametrize("name", NAMES)
def test_inference_is_deterministic_and_gain_invariant(built_models, probe_audio, name):
    model = built_models[name]
    x = probe_audio[:2]
    a = np.asarray(model(x, training=False))
    b = np.asarray(model(x, training=False))
    np.testing.assert_array_equal(a, b)                          # augmentation off at inference
    np.testing.assert_allclose(np.asarray(model(0.25 * x, training=False)), a, atol=1e-4)  # peak-normalised
    np.testing.assert_allclose(np.asarray(model.predict(x, verbose=0)), a, atol=1e-6)   # graph vs eager
    fresh = models.build_model(name)   # training=True updates BatchNorm statistics: not on the shared model
    t = np.asarray(fresh(x, training=True))
    assert t.shape == a.shape and not np.allclose(t, np.asarray(fresh(x, training=False)))


@pytest.mark.parametrize("name", NAMES)
def test_front_end_layers(built_models, name):
    import keras
    model = built_models[name]
    kinds = {type(layer) for layer in model.layers}
    assert F.PeakNormalize in kinds
    if name == "logmel":
        assert isinstance(models.front_end(model), F.LogMelSpectrogram)
        assert F.AntiAliasDownsample not in kinds
    else:
        assert models.front_end(model) is None
        assert isinstance(models.front_end(model, "downsample"), F.AntiAliasDownsample)
        fb = models.front_end(model, "filterbank")
        assert isinstance(fb, F.GaborFilterbank)
        # the learned filterbank gives a (time, band) image on the log-mel's 32 ms grid, read by 2-D convs
        assert fb.output.shape[1:] == (125, 64, 1)
        assert isinstance(models.front_end(model, "block1_conv"), keras.layers.Conv2D)


def test_models_are_trainable_one_step(built_models, probe_audio):
    """One SGD step on a fresh copy changes the weights and keeps the loss finite (gradients flow)."""
    import keras
    for name in NAMES:
        model = models.build_model(name)
        model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
        before = [w.copy() for w in model.get_weights()]
        loss = model.train_on_batch(probe_audio[:2], np.array([3, 6]))
        assert np.isfinite(loss)
        changed = [not np.array_equal(b, a) for b, a in zip(before, model.get_weights())]
        assert sum(changed) >= 4, f"{name}: weights did not move"


@pytest.mark.parametrize("name", NAMES)
def test_save_then_load_gives_identical_predictions(saved, built_models, tf_predictions, probe_audio, name):
    import keras
    import nsynth_cnn  # noqa: F401  (registers the custom layers, as documented)
    loaded = keras.models.load_model(saved[name])
    assert [type(x) for x in loaded.layers] == [type(x) for x in built_models[name].layers]
    np.testing.assert_array_equal(np.asarray(loaded.predict(probe_audio, verbose=0)), tf_predictions[name])


def test_saved_model_loads_under_jax(saved, tf_predictions, probe_audio, tmp_path):
    """A fresh interpreter on the JAX backend needs only ``import nsynth_cnn`` before ``load_model``.
    (A fresh TensorFlow process loading a saved file is exercised by test_cli's ``train`` run.)"""
    if importlib.util.find_spec("jax") is None:
        pytest.skip("jax is not installed (pip install -r requirements.txt installs jax/jaxlib CPU)")
    out = _load_in_subprocess(saved, probe_audio, tmp_path, backend="jax")
    assert "backend=jax" in out
    for name in NAMES:
        got = np.load(tmp_path / f"{name}.npy")
        assert got.shape == (len(probe_audio), 10)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-5)
        # Same weights, different kernels (XLA vs oneDNN): equal to float32 round-off.
        np.testing.assert_allclose(got, tf_predictions[name], atol=2e-4)
        assert np.array_equal(got.argmax(1), tf_predictions[name].argmax(1))


def _load_in_subprocess(saved, probe_audio, tmp_path, backend: str) -> str:
    np.save(tmp_path / "x.npy", probe_audio)
    paths = {name: str(path) for name, path in saved.items()}
    script = textwrap.dedent(f"""
        import numpy as np, keras
        import nsynth_cnn
        print("backend=" + keras.backend.backend())
        assert keras.backend.backend() == {backend!r}
        x = np.load({str(tmp_path / "x.npy")!r})
        for name, path in {paths!r}.items():
            model = keras.models.load_model(path)
            np.save({str(tmp_path)!r} + "/" + name + ".npy", np.asarray(model.predict(x, verbose=0)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True,
                          timeout=1800, env=subprocess_env(KERAS_BACKEND=backend))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout
