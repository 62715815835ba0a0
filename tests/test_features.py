"""Front-end layers against references and signals with known answers."""
from __future__ import annotations

import dataclasses
import inspect

import keras
import numpy as np
import pytest

from conftest import N, SR, shared_path, synth_note, tone
from nsynth_cnn import features as F
from nsynth_cnn import models
from nsynth_cnn.params import AugmentParams, LogImageParams, LogMelParams, WaveformParams

P = LogMelParams()
TOP_DB = LogImageParams().top_db
LIBROSA_TOL_DB = 0.25        # max |layer - librosa| in dB, over bins above -60 dB re each example's peak
LIBROSA_FLOOR_DB = -60.0


@pytest.fixture(scope="module")
def log_mel():
    return models.log_mel_layer()


def image_db(layer, x) -> np.ndarray:
    """Layer output (batch, frames, mels, 1) in [-1, 1] -> dB re each example's peak, (batch, frames, mels)."""
    img = np.asarray(layer(np.asarray(x, np.float32)))[..., 0]
    return (img - 1.0) * F.image_db_per_unit(TOP_DB)


def librosa_db(x: np.ndarray) -> np.ndarray:
    """Reference: librosa power mel spectrogram (HTK mel, no filter normalisation, Hann, centred frames),
    then the same per-example dB-relative-to-peak mapping. pad_mode="reflect" because that is how Keras
    (like torch.stft and librosa < 0.10) pads centred frames; librosa 0.11 defaults to zero padding, which
    would change only the first and last frame."""
    import librosa
    s = librosa.feature.melspectrogram(
        y=np.asarray(x, np.float32), sr=SR, n_fft=P.fft_length, hop_length=P.stft_hop_samples,
        win_length=P.stft_window_samples, window="hann", center=True, pad_mode="reflect", power=2.0,
        n_mels=P.num_mel_bins, fmin=P.mel_min_hz, fmax=P.mel_max_hz, htk=True, norm=None)
    db = 10.0 * np.log10(np.maximum(s, 1e-10))
    return np.maximum(db - db.max(), -TOP_DB).T            # (frames, mels)


def reference_signals() -> np.ndarray:
    rng = np.random.default_rng(3)
    t = np.arange(N) / SR
    chirp = 0.5 * np.sin(2 * np.pi * (50 * t + (7000 - 50) / (2 * 4.0) * t ** 2))
    return np.stack([synth_note(0, 40, 100), synth_note(2, 84, 50), synth_note(8, 60, 127),
                     0.1 * rng.standard_normal(N), chirp, tone(1000.0)]).astype(np.float32)


def _check_against_librosa(layer, signals):
    ours = image_db(layer, signals)
    assert ours.shape == (len(signals), P.num_frames(), P.num_mel_bins)
    for i, x in enumerate(signals):
        ref = librosa_db(x)
        assert ref.shape == ours[i].shape
        mask = ref > LIBROSA_FLOOR_DB
        assert mask.sum() >= 50, "test signal too sparse to compare"
        err = np.abs(ours[i] - ref)[mask]
        assert err.max() <= LIBROSA_TOL_DB, f"signal {i}: max {err.max():.3f} dB, mean {err.mean():.4f} dB"


def test_log_mel_matches_librosa(log_mel):
    _check_against_librosa(log_mel, reference_signals())


def test_log_mel_matches_librosa_on_real_nsynth_notes(log_mel):
    import soundfile as sf
    files = sorted(shared_path("nsynth-real", "audio").glob("*.wav"))[::5]
    _check_against_librosa(log_mel, np.stack([sf.read(f, dtype="float32")[0] for f in files]))


def _htk_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)


def _expected_mel_bin(freq_hz: float) -> int:
    """Index of the HTK triangular mel filter (30 Hz-8 kHz, 64 bins) that responds most to ``freq_hz``."""
    edges_mel = np.linspace(_htk_mel(P.mel_min_hz), _htk_mel(P.mel_max_hz), P.num_mel_bins + 2)
    edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    resp = np.maximum(0.0, np.minimum((freq_hz - lo) / (mid - lo), (hi - freq_hz) / (hi - mid)))
    return int(np.argmax(resp))


@pytest.mark.parametrize("freq_hz", [1000.0, 250.0, 3000.0])
def test_sine_peaks_in_its_mel_bin(log_mel, freq_hz):
    db = image_db(log_mel, tone(freq_hz)[None])[0]
    spectrum = db[5:-5].mean(axis=0)                       # steady-state frames
    expect = _expected_mel_bin(freq_hz)
    assert int(np.argmax(spectrum)) == expect
    assert spectrum[expect] > -1.0                         # the peak is the image's 0 dB point
    far = np.abs(np.arange(P.num_mel_bins) - expect) > 4
    assert spectrum[far].max() < -40.0                     # a pure tone leaves distant bins near the floor


def test_log_mel_shape_range_and_per_example_scaling(log_mel):
    a = synth_note(4, 60, 100)
    loud = 100.0 * tone(200.0)
    alone = np.asarray(log_mel(a[None]))
    batched = np.asarray(log_mel(np.stack([a, loud])))
    assert alone.shape == (1, 126, 64, 1)
    assert alone.min() >= -1.0 and alone.max() == pytest.approx(1.0)
    # A note's image must not depend on its batch mates (Keras' own dB option would fail this).
    np.testing.assert_allclose(batched[0], alone[0], atol=1e-5)
    # dB relative to the peak: gain does not change the image.
    np.testing.assert_allclose(np.asarray(log_mel(0.01 * a[None])), alone, atol=2e-3)


def test_silence_gives_no_nan(log_mel):
    x = np.zeros((2, N), np.float32)
    img = np.asarray(log_mel(x))
    assert np.all(np.isfinite(img))
    assert not np.asarray(F.PeakNormalize()(x)).any()      # stays exactly zero, no 0/0
    assert np.all(np.isfinite(np.asarray(models.downsample_layer()(x))))


@pytest.fixture(scope="module")
def downsample():
    assert WaveformParams().downsample_factor == 2          # the tests below are written for 16 -> 8 kHz
    return models.downsample_layer()


def _gain_db(layer, freq_hz):
    x = tone(freq_hz, amp=0.5)
    y = np.asarray(layer(x[None]))[0, :, 0]
    assert y.shape == (N // 2,)
    core = slice(1000, N // 2 - 1000)                      # away from the zero-padded edges
    rms_in = np.sqrt(np.mean(x[2 * core.start:2 * core.stop] ** 2))
    return 20 * np.log10(np.sqrt(np.mean(y[core] ** 2)) / rms_in)


def test_antialias_passes_1khz(downsample):
    assert abs(_gain_db(downsample, 1000.0)) < 0.1


@pytest.mark.parametrize("freq_hz", [5000.0, 6000.0, 7500.0])
def test_antialias_attenuates_above_new_nyquist(downsample, freq_hz):
    # Without the filter, 5 kHz would fold back to 3 kHz at 8 kHz sampling with full amplitude.
    assert _gain_db(downsample, freq_hz) <= -40.0


def test_antialias_keeps_timing(downsample):
    x = np.zeros((1, N), np.float32)
    x[0, 10_000] = 1.0
    y = np.asarray(downsample(x))[0, :, 0]
    # Symmetric (linear-phase) FIR centred by "same" padding: no delay beyond one output sample.
    assert abs(int(np.argmax(np.abs(y))) - 5_000) <= 1
    assert y.sum() == pytest.approx(0.5, abs=0.01)           # unit DC gain; half the samples kept


def test_peak_normalize():
    x = np.stack([tone(300.0, amp=0.01), tone(300.0, amp=0.9)])
    y = np.asarray(F.PeakNormalize()(x))
    np.testing.assert_allclose(np.max(np.abs(y), axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(y[0], y[1], atol=1e-5)


# the models' augmentation layers, built from params; noise and release always on, so every draw changes the note
AUGMENT = dataclasses.replace(AugmentParams(), noise_probability=1.0, release_probability=1.0)
WAVE_AUGMENTERS = ("time_shift", "tilt", "noise", "release")
IMAGE_AUGMENTERS = ("mel_eq", "spec_mask", "freq_shift")


def augmenter(kind: str):
    layers = models.waveform_augmentation(AUGMENT, seed=1) + models.spectral_augmentation(AUGMENT, seed=1)
    return {layer.name.removeprefix("aug_"): layer for layer in layers}[kind]


@pytest.mark.parametrize("kind", WAVE_AUGMENTERS + IMAGE_AUGMENTERS)
def test_augmentation_is_identity_at_inference_and_random_in_training(kind, log_mel):
    layer = augmenter(kind)
    wave = np.stack([synth_note(1, 60, 100), synth_note(5, 72, 75), synth_note(7, 50, 25)])
    x = wave if kind in WAVE_AUGMENTERS else np.asarray(log_mel(wave))
    np.testing.assert_array_equal(np.asarray(layer(x, training=False)), x)
    np.testing.assert_array_equal(np.asarray(layer(x)), x)
    y = np.asarray(layer(x, training=True))
    assert y.shape == x.shape and np.all(np.isfinite(y))
    assert not np.allclose(y, x)
    clone = layer.__class__.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_time_shift_delays_with_zeros():
    x = np.ones((8, 4000), np.float32)
    y = np.asarray(F.RandomTimeShift(300, seed=0)(x, training=True))
    lead = (y == 0).argmin(axis=1)                         # zeros before the first kept sample
    assert np.all(lead <= 300) and lead.max() > 0
    assert np.all(y.sum(axis=1) == 4000 - lead)




def test_random_release_only_shapes_the_tail():
    x = np.ones((4, 2000), np.float32)
    y = np.asarray(F.RandomRelease(1000, 1000, 0.01, 0.5, probability=1.0, seed=0)(x, training=True))
    np.testing.assert_array_equal(y[:, :1001], 1.0)                # untouched up to note-off
    assert np.all(np.diff(y[:, 1000:], axis=1) <= 0)               # then a monotonic decay
    tau = -1.0 / (1000 * np.log(y[:, 1001]))                       # seconds, from one 1 ms sample of decay
    assert np.all((tau > 0.009) & (tau < 0.51))




@pytest.fixture(scope="module")
def filterbank():
    return models.filterbank_layer()


@pytest.mark.parametrize("freq_hz", [45.0, 220.0, 1000.0, 3500.0])
def test_filterbank_sine_peaks_in_its_mel_band(filterbank, freq_hz):
    """At initialisation the learned filterbank is a mel filterbank: a sine lights the band centred on it."""
    import librosa
    w = WaveformParams()
    rate = w.target_rate_hz
    x = np.sin(2 * np.pi * freq_hz * np.arange(4 * rate) / rate).astype(np.float32)[None, :, None]
    img = np.asarray(filterbank(x))[0, 2:-2, :, 0]                 # (frames, bands), edges dropped
    centres = librosa.mel_frequencies(w.filterbank_bands + 2, fmin=w.filterbank_min_hz,
                                      fmax=w.filterbank_max_hz, htk=True)[1:-1]
    band = int(np.argmax(img.mean(axis=0)))
    assert abs(band - int(np.argmin(np.abs(centres - freq_hz)))) <= 1, (freq_hz, centres[band])
    far = np.abs(centres - freq_hz) > 4 * freq_hz / 10 + 100
    assert img.mean(axis=0)[far].max() < img.mean(axis=0)[band] - 40 / 40   # > 40 dB down (1 unit = 40 dB)


def test_filterbank_shape_range_gain_invariance_and_silence(filterbank):
    w = WaveformParams()
    rate = w.target_rate_hz
    x = np.random.default_rng(0).standard_normal((2, 4 * rate)).astype(np.float32)[..., None] * 0.1
    img = np.asarray(filterbank(x))
    frames = 4 * rate // w.filterbank_stride_samples // w.filterbank_pool
    assert img.shape == (2, frames, w.filterbank_bands, 1)
    assert img.max() == pytest.approx(1.0) and img.min() >= -1.0
    np.testing.assert_allclose(np.asarray(filterbank(0.01 * x)), img, atol=1e-4)   # dB re each note's peak
    assert np.all(np.isfinite(np.asarray(filterbank(np.zeros_like(x)))))
    assert filterbank.compute_output_shape((None, 4 * rate, 1)) == (None, frames, w.filterbank_bands, 1)


def test_filterbank_kernel_scale_slows_the_filters_learning_only():
    """``kernel_scale`` leaves the filters (and so the image) as they are but divides how far one optimiser
    step moves them; files saved before it existed load with 1.0, the layer they were trained with."""
    w = WaveformParams()
    x = np.random.default_rng(1).standard_normal((2, 8000, 1)).astype(np.float32)
    moved = {}
    for scale in (1.0, w.filterbank_kernel_scale):
        layer = models.filterbank_layer(dataclasses.replace(w, filterbank_kernel_scale=scale))
        layer(x)
        start = np.asarray(layer.effective_kernel())
        np.testing.assert_allclose(start, F.gabor_kernels(w.filterbank_bands, w.filterbank_kernel_samples,
                                                          w.target_rate_hz, w.filterbank_min_hz,
                                                          w.filterbank_max_hz), rtol=1e-5, atol=1e-9)
        model = keras.Sequential([keras.Input((8000, 1)), layer, keras.layers.Flatten(), keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
        model.train_on_batch(x, np.ones((2, 1), np.float32))
        moved[scale] = np.abs(np.asarray(layer.effective_kernel()) - start).max() / np.abs(start).max()
        assert F.GaborFilterbank.from_config(layer.get_config()).kernel_scale == scale
    assert moved[w.filterbank_kernel_scale] < moved[1.0] / 100


# ----------------------------------------------------------------------------------------------- one source
def _feature_layer_classes():
    return [c for c in vars(F).values()
            if inspect.isclass(c) and issubclass(c, keras.layers.Layer) and c.__module__ == F.__name__
            and not c.__name__.startswith("_")]


def test_no_layer_has_a_tunable_default():
    """Layers get every setting from :mod:`nsynth_cnn.params` (through the models' builders): a default in a
    layer's signature would be a second value that can disagree with it. Only the seed (None: random) and
    PeakNormalize's numerical guard may have one."""
    classes = _feature_layer_classes()
    assert len(classes) >= 11
    for cls in classes:
        defaults = {name for name, arg in inspect.signature(cls.__init__).parameters.items()
                    if arg.default is not inspect.Parameter.empty}
        assert defaults <= {"seed", "epsilon"}, (cls.__name__, defaults)


@pytest.mark.parametrize("cls, old", [(F.GaborFilterbank, {"kernel_scale": 1.0}),
                                      (F.RandomTilt, {"max_coef": 0.9}),
                                      (F.RandomMelEQ, {"bump_cycles_min": 0.5, "bump_cycles_max": 3.0})])
def test_files_saved_before_a_setting_existed_load_with_the_value_they_had(cls, old):
    layers = [models.filterbank_layer()] + models.waveform_augmentation() + models.spectral_augmentation()
    layer = next(x for x in layers if type(x) is cls)
    config = layer.get_config()
    assert cls.from_config(config).get_config() == config               # today's files: a round trip
    legacy = cls.from_config({k: v for k, v in config.items() if k not in old}).get_config()
    assert legacy == {**config, **old}


def test_peak_relative_image_is_one_mapping():
    """Both front ends' dB mapping: 0 dB (each example's own peak) -> 1, -top_db and below -> -1, linear between."""
    power = np.array([[[1.0, 0.1], [1e-3, 0.0]], [[4.0, 0.4], [4e-9, 4.0]]], np.float32)   # (2, 2, 2)
    img = np.asarray(F.peak_relative_image(power, 80.0))
    np.testing.assert_allclose(img, [[[1.0, 0.75], [0.25, -1.0]], [[1.0, 0.75], [-1.0, 1.0]]], atol=1e-6)
    assert F.image_db_per_unit(80.0) == 40.0

