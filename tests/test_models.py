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
from nsynth_cnn.params import AUDIO, AugmentParams, ConvNetParams, LogImageParams, LogMelParams, WaveformParams

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


def _settings_from_params(w: WaveformParams = WaveformParams(), m: LogMelParams = LogMelParams(),
                          aug: AugmentParams = AugmentParams(), image: LogImageParams = LogImageParams()) -> dict:
    """Layer name -> the settings its config must hold, written out from the params (the spec of the builders)."""
    sr = AUDIO.sample_rate_hz
    return {
        "log_mel": dict(sample_rate=sr, fft_length=m.fft_length, window_length=m.stft_window_samples,
                        hop_length=m.stft_hop_samples, num_mel_bins=m.num_mel_bins, min_hz=m.mel_min_hz,
                        max_hz=m.mel_max_hz, top_db=image.top_db),
        "downsample": dict(factor=w.downsample_factor, num_taps=w.antialias_taps,
                           cutoff_ratio=w.antialias_cutoff_ratio, kaiser_beta=w.antialias_kaiser_beta),
        "filterbank": dict(num_bands=w.filterbank_bands, kernel_size=w.filterbank_kernel_samples,
                           stride=w.filterbank_stride_samples, pool=w.filterbank_pool, sample_rate=w.target_rate_hz,
                           min_hz=w.filterbank_min_hz, max_hz=w.filterbank_max_hz, top_db=image.top_db,
                           kernel_scale=w.filterbank_kernel_scale),
        "aug_release": dict(offset=int(AUDIO.held_seconds * sr), sample_rate=sr, tau_min=aug.release_tau_seconds[0],
                            tau_max=aug.release_tau_seconds[1], probability=aug.release_probability),
        "aug_time_shift": dict(max_shift=int(aug.max_time_shift_seconds * sr)),
        "aug_tilt": dict(max_coef=aug.waveform_tilt_max_coef),
        "aug_noise": dict(snr_db_min=aug.noise_snr_db_min, snr_db_max=aug.noise_snr_db_max,
                          probability=aug.noise_probability),
        "aug_freq_shift": dict(max_bins=aug.freq_shift_max_bins),
        "aug_mel_eq": dict(tilt_db=aug.eq_max_tilt_db, bumps_db=aug.eq_max_bumps_db,
                           bump_cycles_min=aug.eq_bump_cycles[0], bump_cycles_max=aug.eq_bump_cycles[1],
                           top_db=image.top_db),
        "aug_spec_mask": dict(max_freq_bins=aug.spec_freq_mask_bins, max_time_frames=aug.spec_time_mask_frames),
    }


def _check_settings(model, expect: dict, net: ConvNetParams):
    import keras
    seen = set()
    for layer in model.layers:
        cfg = layer.get_config()
        if isinstance(layer, F.PeakNormalize):
            assert cfg["epsilon"] == F.PEAK_FLOOR
        elif layer.name in expect:            # every setting of the layer is checked, none left to a default
            settings = {k: v for k, v in cfg.items() if k not in ("name", "trainable", "dtype", "seed")}
            assert settings == expect[layer.name], layer.name
            seen.add(layer.name)
        elif isinstance(layer, keras.layers.Conv2D):
            assert tuple(cfg["kernel_size"]) == net.conv_kernel and tuple(cfg["strides"]) == (1, 1)
    assert model.get_layer("embedding").units == net.head_units
    assert [x.filters for x in model.layers if isinstance(x, keras.layers.Conv2D)] == [f for f, _ in models.CONV_LAYERS]
    return seen


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_setting_comes_from_params(built_models, name):
    """Each front-end and augmentation layer holds exactly the params' values; the conv trunk and head read
    ConvNetParams; both networks share the one trunk table."""
    seen = _check_settings(built_models[name], _settings_from_params(), ConvNetParams())
    front = {"log_mel"} if name == "logmel" else {"downsample", "filterbank"}
    assert seen == {k for k in _settings_from_params() if k.startswith("aug_")} | front


def test_changed_params_reach_the_layers():
    image, net = LogImageParams(top_db=60.0), ConvNetParams(conv_kernel=(5, 3), head_units=32)
    aug = AugmentParams(waveform_tilt_max_coef=0.5, eq_bump_cycles=(1.0, 2.0), spec_time_mask_frames=7)
    model = models.build_model("logmel", aug=aug, net=net, image=image)
    assert _check_settings(model, _settings_from_params(aug=aug, image=image), net) >= {"log_mel", "aug_mel_eq"}


SAMPLE_NOTES = ROOT / "data" / "nsynth-sample" / "audio"


@pytest.mark.parametrize("name", NAMES)
def test_shipped_network_is_the_network_params_build(name):
    """The shipped ``weights/<name>_cnn.keras`` and the network that ``build_model`` makes from params today are
    the same network: same layers with the same settings and parameter count, and given the file's weights the
    same probabilities bit for bit on sample notes. A changed param (without retraining) or a changed layer
    fails here; so would a saved file that no longer loads."""
    import keras
    import soundfile as sf

    import nsynth_cnn  # noqa: F401  (registers the custom layers)
    path = ROOT / "weights" / f"{name}_cnn.keras"
    files = sorted(SAMPLE_NOTES.glob("*.wav"))[::12]
    if not path.is_file() or not files:
        pytest.skip(f"{path} or {SAMPLE_NOTES} absent")
    x = np.stack([sf.read(f, dtype="float32")[0] for f in files])
    shipped = keras.models.load_model(path, compile=False)
    built = models.build_model(name)
    kinds = [[(layer.name, type(layer)) for layer in model.layers] for model in (built, shipped)]
    assert kinds[0] == kinds[1]
    for ours, theirs in zip(built.layers, shipped.layers):
        assert ours.get_config() == theirs.get_config(), ours.name
    assert built.count_params() == shipped.count_params()
    built.set_weights(shipped.get_weights())
    np.testing.assert_array_equal(built.predict(x, batch_size=len(x), verbose=0),
                                  shipped.predict(x, batch_size=len(x), verbose=0))


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


@pytest.mark.slow
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
