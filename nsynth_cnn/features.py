"""Audio front ends and training-only augmentation, as Keras layers (kapre style).

Every layer is written with ``keras.ops`` only, has a ``get_config`` and is registered for serialisation,
so a saved model loads under the TensorFlow, JAX and PyTorch backends after ``import nsynth_cnn``.
Shapes are given as (batch, ...) in each docstring.

The layers own their math, not their settings: every tunable number is a required constructor argument, and
the models build the layers from :mod:`nsynth_cnn.params` (``models.log_mel_layer`` and its neighbours), the
one place for their values. Only numerical guards (the floors below) are constants here.
"""
from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

PACKAGE = "nsynth_cnn"
PEAK_FLOOR = 1e-4        # a waveform whose peak is below this (-80 dBFS) is divided by this instead: no 0/0
POWER_FLOOR = 1e-10      # band power floor before the log (-100 dB): silence gives a finite image


def _register(cls):
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)


class _OldConfigs:
    """Loads layers saved before some of their constructor arguments existed: ``OLD_CONFIG`` holds the values
    those files' layers had (fixed history, not defaults; a new layer is given every setting)."""
    OLD_CONFIG: dict = {}

    @classmethod
    def from_config(cls, config):
        return super().from_config({**cls.OLD_CONFIG, **config})


def image_db_per_unit(top_db: float) -> float:
    """dB per unit of the log image: ``[-top_db, 0] dB`` spans ``[-1, 1]``."""
    return top_db / 2.0


def peak_relative_image(power, top_db: float):
    """(batch, a, b) band power -> the log image both front ends make: dB relative to *each example's* peak
    (over both axes), floored at ``-top_db`` and mapped ``[-top_db, 0] dB -> [-1, 1]``."""
    db = 10.0 * ops.log10(ops.maximum(power, POWER_FLOOR))
    db = ops.maximum(db - ops.max(db, axis=(1, 2), keepdims=True), -top_db)
    return db / image_db_per_unit(top_db) + 1.0


# ----------------------------------------------------------------------------------------------- front ends
@_register
class PeakNormalize(keras.layers.Layer):
    """(batch, samples) -> same; divides each waveform by its peak so loudness/gain cannot be a cue."""

    def __init__(self, epsilon: float = PEAK_FLOOR, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, x):
        peak = ops.max(ops.abs(x), axis=-1, keepdims=True)
        return x / ops.maximum(peak, self.epsilon)

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def lowpass_fir(num_taps: int, cutoff: float, beta: float) -> np.ndarray:
    """Kaiser-windowed sinc low-pass; ``cutoff`` as a fraction of the input Nyquist. Unit DC gain."""
    from scipy.signal import firwin
    return firwin(num_taps, cutoff, window=("kaiser", beta)).astype(np.float32)


@_register
class AntiAliasDownsample(keras.layers.Layer):
    """(batch, samples) -> (batch, ceil(samples / factor), 1): FIR low-pass below the new Nyquist, then
    decimate by ``factor``.

    The filter is a fixed (non-trainable) Kaiser-windowed sinc; the strided convolution computes only the
    kept samples, so filtering and decimation cost one pass. When the length is known it is computed in
    polyphase form (same result): the signal as blocks of ``factor * POLY_BLOCK`` samples, convolved with
    ``POLY_BLOCK`` output channels (one per output in the block) - a dense convolution that runs ~5x faster
    on CPU than the equivalent 1-channel strided one.
    """
    POLY_BLOCK = 16

    def __init__(self, factor: int, num_taps: int, cutoff_ratio: float, kaiser_beta: float, **kwargs):
        super().__init__(**kwargs)
        self.factor, self.num_taps = int(factor), int(num_taps)
        self.cutoff_ratio, self.kaiser_beta = float(cutoff_ratio), float(kaiser_beta)
        taps = lowpass_fir(self.num_taps, self.cutoff_ratio / self.factor, self.kaiser_beta)
        self._kernel = taps[::-1].reshape(-1, 1, 1).copy()
        # Polyphase weights (span, factor*B, B): output j of a block applies the taps from input offset factor*j.
        width = self.factor * self.POLY_BLOCK
        span = -(-(self.factor * (self.POLY_BLOCK - 1) + len(taps)) // width)
        self._poly = np.zeros((span, width, self.POLY_BLOCK), np.float32)
        for j in range(self.POLY_BLOCK):
            pos = self.factor * j + np.arange(len(taps))
            self._poly[pos // width, pos % width, j] = self._kernel[:, 0, 0]

    def call(self, x):
        x = ops.cast(x, "float32")
        n = x.shape[1]
        if n is None:
            y = ops.conv(ops.expand_dims(x, -1), ops.convert_to_tensor(self._kernel), strides=self.factor,
                         padding="same")
            return ops.cast(y, self.compute_dtype)
        out = -(-n // self.factor)
        left = max((out - 1) * self.factor + len(self._kernel) - n, 0) // 2    # as padding="same"
        span, width, block = self._poly.shape
        rows = max(-(-out // block) + span - 1, -(-(n + left) // width))
        x = ops.pad(x, ((0, 0), (left, rows * width - n - left)))
        y = ops.conv(ops.reshape(x, (-1, rows, width)), ops.convert_to_tensor(self._poly), padding="valid")
        y = ops.reshape(y, (-1, (rows - span + 1) * block))[:, :out]
        return ops.cast(ops.expand_dims(y, -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        return (input_shape[0], None if n is None else -(-n // self.factor), 1)

    def get_config(self):
        return {**super().get_config(), "factor": self.factor, "num_taps": self.num_taps,
                "cutoff_ratio": self.cutoff_ratio, "kaiser_beta": self.kaiser_beta}


@_register
class LogMelSpectrogram(keras.layers.Layer):
    """(batch, samples) -> (batch, frames, mel_bins, 1): log-mel image scaled to about [-1, 1].

    Power mel spectrogram from ``keras.layers.MelSpectrogram`` (Hann window, centred frames, HTK mel
    scale), then :func:`peak_relative_image`: dB relative to *each example's* peak, floored at ``-top_db``
    and mapped ``[-top_db, 0] dB -> [-1, 1]``. (Keras' own dB option uses one maximum for the whole batch,
    which would make a note's features depend on its batch mates.)
    """

    def __init__(self, sample_rate: int, fft_length: int, window_length: int, hop_length: int,
                 num_mel_bins: int, min_hz: float, max_hz: float, top_db: float, **kwargs):
        super().__init__(**kwargs)
        self.sample_rate, self.fft_length, self.window_length = sample_rate, fft_length, window_length
        self.hop_length, self.num_mel_bins = hop_length, num_mel_bins
        self.min_hz, self.max_hz, self.top_db = min_hz, max_hz, top_db
        self.mel = keras.layers.MelSpectrogram(
            fft_length=fft_length, sequence_stride=hop_length, sequence_length=window_length,
            window="hann", sampling_rate=sample_rate, num_mel_bins=num_mel_bins, min_freq=min_hz,
            max_freq=max_hz, power_to_db=False, mag_exp=2.0, dtype="float32")

    def build(self, input_shape):
        self.mel.build(input_shape)
        super().build(input_shape)

    def call(self, x):
        power = self.mel(ops.cast(x, "float32"))              # (batch, mel, frames)
        img = ops.transpose(peak_relative_image(power, self.top_db), (0, 2, 1))
        return ops.cast(ops.expand_dims(img, -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        frames = None if n is None else n // self.hop_length + 1
        return (input_shape[0], frames, self.num_mel_bins, 1)

    def get_config(self):
        return {**super().get_config(), "sample_rate": self.sample_rate, "fft_length": self.fft_length,
                "window_length": self.window_length, "hop_length": self.hop_length,
                "num_mel_bins": self.num_mel_bins, "min_hz": self.min_hz, "max_hz": self.max_hz,
                "top_db": self.top_db}


def gabor_kernels(num_bands: int, kernel_size: int, sample_rate: int, min_hz: float, max_hz: float) -> np.ndarray:
    """(kernel_size, 1, 2 * num_bands) cosine/sine Gabor pairs at mel-spaced centre frequencies.

    Each band's Gaussian window is as wide in time as its mel band is narrow in frequency (sigma_t =
    1 / (2 pi sigma_f), sigma_f = half the spacing to the next centre), capped to fit the kernel; kernels are
    scaled to unit gain at their centre frequency, so band energies start out on a mel-spectrogram scale.
    """
    import librosa
    edges = librosa.mel_frequencies(num_bands + 2, fmin=min_hz, fmax=max_hz, htk=True)
    centres, spacing = edges[1:-1], np.diff(edges)[1:]
    t = (np.arange(kernel_size) - (kernel_size - 1) / 2) / sample_rate
    sigma_t = np.minimum(1.0 / (2 * np.pi * spacing / 2), kernel_size / 6 / sample_rate)
    win = np.exp(-0.5 * (t[:, None] / sigma_t[None, :]) ** 2)
    win /= win.sum(axis=0, keepdims=True)
    arg = 2 * np.pi * centres[None, :] * t[:, None]
    k = np.concatenate([win * np.cos(arg), win * np.sin(arg)], axis=1) * 2.0
    return k[:, None, :].astype(np.float32)


@_register
class GaborFilterbank(_OldConfigs, keras.layers.Layer):
    """(batch, samples, 1) -> (batch, frames, bands, 1): learnable mel-initialised filterbank, as a log image.

    A strided convolution with ``num_bands`` cosine/sine kernel pairs (initialised as mel-spaced Gabor
    filters, see :func:`gabor_kernels`, then trained), energy re^2 + im^2 per band, mean over ``pool``
    frames, then :func:`peak_relative_image` (dB relative to each example's peak, floored at ``-top_db``,
    mapped to [-1, 1]) - the same scale as :class:`LogMelSpectrogram`, so the same spectral augmentations
    apply. The raw-waveform network's own learned counterpart of a log-mel front end (in the spirit of
    SincNet/LEAF).

    ``kernel_scale``: the filters are ``kernel_scale * weight``. Adam moves every weight by about the learning
    rate per step whatever its size, and the Gabor taps are ~0.005, so trained directly (``kernel_scale=1``, the
    layer of run r8 and earlier) they lose their band-pass shape within an epoch (r8's: median correlation 0.37
    with the initial filters, a quarter of their energy left near their peak frequency). A small scale stores
    the taps as large weights, which slows their learning by the same factor. Files saved before the setting
    existed load with 1.0, the layer they were trained with.
    """
    OLD_CONFIG = {"kernel_scale": 1.0}

    def __init__(self, num_bands: int, kernel_size: int, stride: int, pool: int, sample_rate: int,
                 min_hz: float, max_hz: float, top_db: float, kernel_scale: float, **kwargs):
        super().__init__(**kwargs)
        self.num_bands, self.kernel_size, self.stride, self.pool = num_bands, kernel_size, stride, pool
        self.sample_rate, self.min_hz, self.max_hz, self.top_db = sample_rate, min_hz, max_hz, top_db
        self.kernel_scale = float(kernel_scale)

    def build(self, input_shape):
        init = gabor_kernels(self.num_bands, self.kernel_size, self.sample_rate, self.min_hz, self.max_hz)
        self.kernel = self.add_weight(shape=init.shape, name="kernel", dtype="float32",
                                      initializer=keras.initializers.Constant(init / self.kernel_scale))
        super().build(input_shape)

    def effective_kernel(self):
        """The effective (kernel_size, 1, 2 * num_bands) filters."""
        return self.kernel * self.kernel_scale

    def call(self, x):
        y = ops.conv(ops.cast(x, "float32"), self.effective_kernel(), strides=self.stride, padding="same")
        power = ops.square(y[..., :self.num_bands]) + ops.square(y[..., self.num_bands:])
        frames = (ops.shape(power)[1] // self.pool) * self.pool
        power = ops.mean(ops.reshape(power[:, :frames], (-1, frames // self.pool, self.pool, self.num_bands)),
                         axis=2)
        img = peak_relative_image(power, self.top_db)
        return ops.cast(ops.expand_dims(img, -1), self.compute_dtype)

    def compute_output_shape(self, input_shape):
        n = input_shape[1]
        frames = None if n is None else (-(-n // self.stride)) // self.pool
        return (input_shape[0], frames, self.num_bands, 1)

    def get_config(self):
        return {**super().get_config(), "num_bands": self.num_bands, "kernel_size": self.kernel_size,
                "stride": self.stride, "pool": self.pool, "sample_rate": self.sample_rate,
                "min_hz": self.min_hz, "max_hz": self.max_hz, "top_db": self.top_db,
                "kernel_scale": self.kernel_scale}


# ----------------------------------------------------------------------------------------------- augmentation
class _RandomLayer(_OldConfigs, keras.layers.Layer):
    """Base for training-only random layers: identity unless ``training`` is true."""

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=None):
        if not training:
            return x
        # augment in float32 (its random draws are float32), back to the compute dtype (float16 when mixed)
        return ops.cast(self.augment(ops.cast(x, "float32")), x.dtype)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@_register
class RandomTimeShift(_RandomLayer):
    """(batch, samples): delays each note by 0..max_shift samples (zeros in front, tail dropped)."""

    def __init__(self, max_shift: int, **kwargs):
        super().__init__(**kwargs)
        self.max_shift = int(max_shift)

    def augment(self, x):
        n = ops.shape(x)[1]
        shift = keras.random.randint((ops.shape(x)[0], 1), 0, self.max_shift + 1, seed=self.seed_generator)
        idx = ops.expand_dims(ops.arange(n), 0) - shift
        shifted = ops.take_along_axis(x, ops.maximum(idx, 0), axis=1)
        return ops.where(idx >= 0, shifted, ops.zeros_like(shifted))

    def get_config(self):
        return {**super().get_config(), "max_shift": self.max_shift}


@_register
class RandomTilt(_RandomLayer):
    """(batch, samples): random first-order EQ y[t] = x[t] + a*x[t-1], a ~ U(-max_coef, max_coef) per note.

    a > 0 darkens (low shelf up), a < 0 brightens: cheap stand-in for microphone/room colouration,
    the main difference between SoundFont renders and NSynth recordings. Peak is renormalised after.
    """
    OLD_CONFIG = {"max_coef": 0.9}

    def __init__(self, max_coef: float, **kwargs):
        super().__init__(**kwargs)
        self.max_coef = float(max_coef)

    def augment(self, x):
        a = keras.random.uniform((ops.shape(x)[0], 1), -self.max_coef, self.max_coef, seed=self.seed_generator)
        prev = ops.pad(x[:, :-1], ((0, 0), (1, 0)))
        y = x + a * prev
        return y / ops.maximum(ops.max(ops.abs(y), axis=-1, keepdims=True), PEAK_FLOOR)

    def get_config(self):
        return {**super().get_config(), "max_coef": self.max_coef}


@_register
class RandomNoise(_RandomLayer):
    """(batch, samples): with probability ``probability`` add white noise at SNR ~ U(min_db, max_db)."""

    def __init__(self, snr_db_min: float, snr_db_max: float, probability: float, **kwargs):
        super().__init__(**kwargs)
        self.snr_db_min, self.snr_db_max, self.probability = snr_db_min, snr_db_max, probability

    def augment(self, x):
        b = ops.shape(x)[0]
        snr = keras.random.uniform((b, 1), self.snr_db_min, self.snr_db_max, seed=self.seed_generator)
        on = ops.cast(keras.random.uniform((b, 1), seed=self.seed_generator) < self.probability, x.dtype)
        rms = ops.sqrt(ops.mean(ops.square(x), axis=-1, keepdims=True) + 1e-12)
        noise = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
        return x + on * noise * rms * ops.power(10.0, -snr / 20.0)

    def get_config(self):
        return {**super().get_config(), "snr_db_min": self.snr_db_min, "snr_db_max": self.snr_db_max,
                "probability": self.probability}


@_register
class RandomMelEQ(_RandomLayer):
    """(batch, frames, mels, 1) log image in [-1, 1] units (``top_db``: its dB range): adds a random tilt
    (up to ``tilt_db`` across the band) plus a sine across the bands of random phase, of ``bump_cycles_min`` to
    ``bump_cycles_max`` cycles and up to ``bumps_db`` amplitude, i.e. a random equaliser in the dB domain."""
    OLD_CONFIG = {"bump_cycles_min": 0.5, "bump_cycles_max": 3.0}

    def __init__(self, tilt_db: float, bumps_db: float, bump_cycles_min: float, bump_cycles_max: float,
                 top_db: float, **kwargs):
        super().__init__(**kwargs)
        self.tilt_db, self.bumps_db, self.top_db = tilt_db, bumps_db, top_db
        self.bump_cycles_min, self.bump_cycles_max = float(bump_cycles_min), float(bump_cycles_max)

    def augment(self, x):
        b, mels = ops.shape(x)[0], ops.shape(x)[2]
        pos = ops.linspace(-1.0, 1.0, mels)                    # the band, 2 units wide
        tilt = keras.random.uniform((b, 1), -1.0, 1.0, seed=self.seed_generator) * self.tilt_db
        phase = keras.random.uniform((b, 1), 0.0, 2.0 * math.pi, seed=self.seed_generator)
        cycles = keras.random.uniform((b, 1), self.bump_cycles_min, self.bump_cycles_max, seed=self.seed_generator)
        amp = keras.random.uniform((b, 1), 0.0, 1.0, seed=self.seed_generator) * self.bumps_db
        curve_db = tilt * pos[None, :] / 2.0 + amp * ops.sin(cycles * math.pi * pos[None, :] + phase)
        return x + ops.reshape(curve_db / image_db_per_unit(self.top_db), (b, 1, mels, 1))

    def get_config(self):
        return {**super().get_config(), "tilt_db": self.tilt_db, "bumps_db": self.bumps_db,
                "bump_cycles_min": self.bump_cycles_min, "bump_cycles_max": self.bump_cycles_max,
                "top_db": self.top_db}


@_register
class SpecMask(_RandomLayer):
    """(batch, frames, mels, 1): SpecAugment - one random frequency band and one time span set to -1."""

    def __init__(self, max_freq_bins: int, max_time_frames: int, **kwargs):
        super().__init__(**kwargs)
        self.max_freq_bins, self.max_time_frames = max_freq_bins, max_time_frames

    def _mask(self, b, n, width_max):
        width = keras.random.randint((b, 1), 0, width_max + 1, seed=self.seed_generator)
        start = keras.random.randint((b, 1), 0, n, seed=self.seed_generator)
        pos = ops.expand_dims(ops.arange(n), 0)
        return ops.logical_and(pos >= start, pos < start + width)

    def augment(self, x):
        b, t, m = ops.shape(x)[0], ops.shape(x)[1], ops.shape(x)[2]
        fmask = ops.reshape(self._mask(b, m, self.max_freq_bins), (b, 1, m, 1))
        tmask = ops.reshape(self._mask(b, t, self.max_time_frames), (b, t, 1, 1))
        return ops.where(ops.logical_or(fmask, tmask), -ops.ones_like(x), x)

    def get_config(self):
        return {**super().get_config(), "max_freq_bins": self.max_freq_bins,
                "max_time_frames": self.max_time_frames}


@_register
class RandomFreqShift(_RandomLayer):
    """(batch, frames, mels, 1): shifts each log-mel image by a random whole number of mel bins in
    [-max_bins, max_bins] (vacated bins set to -1, the floor). Roughly a pitch/formant shift of a few
    semitones: the family should not hinge on exact spectral positions."""

    def __init__(self, max_bins: int, **kwargs):
        super().__init__(**kwargs)
        self.max_bins = int(max_bins)

    def augment(self, x):
        b, m = ops.shape(x)[0], ops.shape(x)[2]
        shift = keras.random.randint((b, 1), -self.max_bins, self.max_bins + 1, seed=self.seed_generator)
        idx = ops.expand_dims(ops.arange(m), 0) - shift                      # (b, m)
        valid = ops.logical_and(idx >= 0, idx < m)
        gathered = ops.take_along_axis(x, ops.reshape(ops.clip(idx, 0, m - 1), (b, 1, m, 1)), axis=2)
        return ops.where(ops.reshape(valid, (b, 1, m, 1)), gathered, -ops.ones_like(x))

    def get_config(self):
        return {**super().get_config(), "max_bins": self.max_bins}


@_register
class RandomRelease(_RandomLayer):
    """(batch, samples): with probability ``probability``, re-shapes the release after note-off
    (``offset`` samples) with an exponential decay of time constant tau ~ log-uniform(tau_min, tau_max) s.

    Rendered SoundFont notes ring on for most of the last second; real NSynth notes mostly stop within
    0.1-0.3 s of note-off. Randomising the release keeps the network from using the tail as a cue.
    """

    def __init__(self, offset: int, sample_rate: int, tau_min: float, tau_max: float, probability: float,
                 **kwargs):
        super().__init__(**kwargs)
        self.offset, self.sample_rate = int(offset), int(sample_rate)
        self.tau_min, self.tau_max, self.probability = float(tau_min), float(tau_max), float(probability)

    def augment(self, x):
        b, n = ops.shape(x)[0], ops.shape(x)[1]
        log_tau = keras.random.uniform((b, 1), float(np.log(self.tau_min)), float(np.log(self.tau_max)),
                                       seed=self.seed_generator)
        on = keras.random.uniform((b, 1), seed=self.seed_generator) < self.probability
        t = ops.maximum(ops.cast(ops.arange(n), "float32")[None, :] - float(self.offset), 0.0) / self.sample_rate
        env = ops.exp(-t / ops.exp(log_tau))
        return x * ops.cast(ops.where(on, env, ops.ones_like(env)), x.dtype)

    def get_config(self):
        return {**super().get_config(), "offset": self.offset, "sample_rate": self.sample_rate,
                "tau_min": self.tau_min, "tau_max": self.tau_max, "probability": self.probability}
