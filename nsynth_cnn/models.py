"""The two CNNs. Each architecture is a table of layer rows walked by one loop (YAMNet style).

Both models take raw waveforms, float32 (batch, 64000) at 16 kHz in [-1, 1], and return softmax
probabilities over the 10 families in :data:`nsynth_cnn.params.FAMILIES` order. The front end
(normalisation, anti-aliased downsampling or log-mel) and the training-only augmentation are layers of the
model, so no caller can feed it the wrong features.
"""
from __future__ import annotations

import keras
from keras import layers

from . import features as F
from .params import AUDIO, MODEL_NAMES, NUM_CLASSES, TOP_DB, AugmentParams, LogMelParams, TrainParams, WaveformParams

# (kind, kernel, stride, filters, pool); "conv" = Conv -> BatchNorm -> ReLU, then max-pool by `pool`.
# Waveform CNN: 8 kHz signal -> learned mel-initialised filterbank (WaveformParams.filterbank_*: 125 frames of
# 32 ms x 64 bands, a (time, band) image) -> 2-D convolutions. Kernels shared across bands make a timbre
# pattern look the same at every pitch, which a 1-D stack with the bands as channels cannot do (it reached
# 0.18 on real NSynth notes, docs/experiments.md r4). Output sizes (time x bands) in comments.
WAVEFORM_LAYERS = (
    ("conv", (3, 3), 1, 24, (2, 2)),    # 125 x 64 -> 62 x 32
    ("conv", (3, 3), 1, 48, (2, 2)),    # 31 x 16
    ("conv", (3, 3), 1, 96, (2, 2)),    # 15 x 8
    ("conv", (3, 3), 1, 192, (2, 2)),   # 7 x 4
    ("conv", (3, 3), 1, 256, (1, 1)),   # 7 x 4, then global pooling
)

# Log-mel CNN on the (frames, mel bins, 1) image; kernels and pools are (time, frequency).
LOGMEL_LAYERS = (
    ("conv", (3, 3), 1, 24, (2, 2)),    # 126 x 64 -> 63 x 32
    ("conv", (3, 3), 1, 48, (2, 2)),    # 31 x 16
    ("conv", (3, 3), 1, 96, (2, 2)),    # 15 x 8
    ("conv", (3, 3), 1, 192, (2, 2)),   # 7 x 4
    ("conv", (3, 3), 1, 256, (1, 1)),   # 7 x 4, then global pooling
)
HEAD_UNITS = 128


def _conv_block(kernel, stride, filters, pool, name):
    block = [layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"),
             layers.BatchNormalization(name=f"{name}_bn"),
             layers.ReLU(name=f"{name}_relu")]
    if pool != (1, 1):
        block.append(layers.MaxPooling2D(pool, name=f"{name}_pool"))
    return block


def _walk(table):
    out = []
    for i, (kind, kernel, stride, filters, pool) in enumerate(table):
        assert kind == "conv", kind
        out += _conv_block(kernel, stride, filters, pool, f"block{i + 1}")
    return out


def _head(dropout: float):
    return [layers.GlobalAveragePooling2D(name="global_pool"),
            layers.Dropout(dropout, name="dropout"),
            layers.Dense(HEAD_UNITS, activation="relu", name="embedding"),
            layers.Dropout(dropout / 2, name="dropout_head"),
            layers.Dense(NUM_CLASSES, name="logits"),
            layers.Activation("softmax", dtype="float32", name="probabilities")]


def _waveform_augment(aug: AugmentParams, seed: int):
    return [F.RandomRelease(int(AUDIO.held_seconds * AUDIO.sample_rate_hz), AUDIO.sample_rate_hz,
                            *aug.release_tau_seconds, aug.release_probability, seed=seed + 6,
                            name="aug_release"),
            F.RandomTimeShift(int(aug.max_time_shift_seconds * AUDIO.sample_rate_hz), seed=seed,
                              name="aug_time_shift"),
            F.RandomTilt(seed=seed + 1, name="aug_tilt"),
            F.RandomNoise(aug.noise_snr_db_min, aug.noise_snr_db_max, aug.noise_probability, seed=seed + 2,
                          name="aug_noise")]


def _spectral_augment(aug: AugmentParams, top_db: float, seed: int):
    """Augmentation of a (frames, bands, 1) log image in [-1, 1] units (log-mel or learned filterbank)."""
    return [
        F.RandomFreqShift(aug.freq_shift_max_bins, seed=seed + 5, name="aug_freq_shift"),
        F.RandomMelEQ(aug.eq_max_tilt_db, aug.eq_max_bumps_db, top_db, seed=seed + 3, name="aug_mel_eq"),
        F.SpecMask(aug.spec_freq_mask_bins, aug.spec_time_mask_frames, seed=seed + 4, name="aug_spec_mask")]


def build_waveform_cnn(p: WaveformParams = WaveformParams(), aug: AugmentParams | None = AugmentParams(),
                       train: TrainParams = TrainParams()) -> keras.Model:
    """Raw-waveform CNN: peak-normalise -> anti-aliased downsampling to ``p.target_rate_hz`` -> learned
    filterbank (a log band-energy image) -> 2-D convs."""
    stack = [keras.Input((AUDIO.num_samples,), name="waveform"), F.PeakNormalize(name="peak_normalize")]
    if aug is not None:
        stack += _waveform_augment(aug, train.seed)
    stack += [F.AntiAliasDownsample(p.downsample_factor, p.antialias_taps, p.antialias_cutoff_ratio,
                                    p.antialias_kaiser_beta, name="downsample"),
              F.GaborFilterbank(p.filterbank_bands, p.filterbank_kernel_samples, p.filterbank_stride_samples,
                                p.filterbank_pool, p.target_rate_hz, p.filterbank_min_hz, p.filterbank_max_hz,
                                TOP_DB, p.filterbank_kernel_scale, name="filterbank")]
    if aug is not None:
        stack += _spectral_augment(aug, TOP_DB, train.seed)
    stack += _walk(WAVEFORM_LAYERS) + _head(train.dropout)
    return keras.Sequential(stack, name="waveform_cnn")


def log_mel_layer(p: LogMelParams = LogMelParams()) -> F.LogMelSpectrogram:
    """The log-mel CNN's front end: waveform -> (frames, mel bins, 1) image in [-1, 1]."""
    return F.LogMelSpectrogram(AUDIO.sample_rate_hz, p.fft_length, p.stft_window_samples, p.stft_hop_samples,
                               p.num_mel_bins, p.mel_min_hz, p.mel_max_hz, p.top_db, name="log_mel")


def build_logmel_cnn(p: LogMelParams = LogMelParams(), aug: AugmentParams | None = AugmentParams(),
                     train: TrainParams = TrainParams()) -> keras.Model:
    """Log-mel CNN: peak-normalise -> log-mel image (inside the model) -> 2-D convs."""
    stack = [keras.Input((AUDIO.num_samples,), name="waveform"), F.PeakNormalize(name="peak_normalize")]
    if aug is not None:
        stack += _waveform_augment(aug, train.seed)
    stack += [log_mel_layer(p)]
    if aug is not None:
        stack += _spectral_augment(aug, p.top_db, train.seed)
    stack += _walk(LOGMEL_LAYERS) + _head(train.dropout)
    return keras.Sequential(stack, name="logmel_cnn")


BUILDERS = {"waveform": build_waveform_cnn, "logmel": build_logmel_cnn}


def build_model(name: str, **kwargs) -> keras.Model:
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return BUILDERS[name](**kwargs)


def front_end(model: keras.Model, name: str = "log_mel") -> keras.layers.Layer | None:
    """The model's feature layer (e.g. to show the log-mel image the network sees)."""
    for layer in model.layers:
        if layer.name == name:
            return layer
    return None
