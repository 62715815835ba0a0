"""The two CNNs: a front end each, then one shared conv trunk, a table of layer rows walked by one loop
(YAMNet style).

Both models take raw waveforms, float32 (batch, 64000) at 16 kHz in [-1, 1], and return softmax
probabilities over the 10 families in :data:`nsynth_cnn.params.FAMILIES` order. The front end
(normalisation, anti-aliased downsampling or log-mel) and the training-only augmentation are layers of the
model, so no caller can feed it the wrong features. Every setting comes from :mod:`nsynth_cnn.params`: the small
builder functions below turn its dataclasses into layers (the layers themselves have no defaults to disagree).
"""
from __future__ import annotations

import keras
from keras import layers

from . import features as F
from .params import (AUDIO, MODEL_NAMES, NUM_CLASSES, AugmentParams, ConvNetParams, LogImageParams, LogMelParams,
                     TrainParams, WaveformParams)

# The conv trunk of both networks, on their (time, band) log image: one row per block, (filters, pool). A block is
# Conv (ConvNetParams.conv_kernel, stride 1) -> BatchNorm -> ReLU, then max-pool by `pool` (time, band).
# Waveform CNN: 8 kHz signal -> learned mel-initialised filterbank (WaveformParams.filterbank_*: 125 frames of
# 32 ms x 64 bands) -> this trunk; log-mel CNN: 126 frames x 64 mel bins -> this trunk. Kernels shared across bands
# make a timbre pattern look the same at every pitch, which a 1-D stack with the bands as channels cannot do (it
# reached 0.18 on real NSynth notes, docs/experiments.md r4). Output sizes (time x bands) in comments.
CONV_LAYERS = (
    (24, (2, 2)),     # 125 (log-mel 126) x 64 -> 62 (63) x 32
    (48, (2, 2)),     # 31 x 16
    (96, (2, 2)),     # 15 x 8
    (192, (2, 2)),    # 7 x 4
    (256, (1, 1)),    # 7 x 4, then global pooling
)


# ----------------------------------------------------------------------------------------------- front ends
def downsample_layer(p: WaveformParams = WaveformParams()) -> F.AntiAliasDownsample:
    """The waveform CNN's anti-aliased decimation from 16 kHz to ``p.target_rate_hz``."""
    return F.AntiAliasDownsample(p.downsample_factor, p.antialias_taps, p.antialias_cutoff_ratio,
                                 p.antialias_kaiser_beta, name="downsample")


def filterbank_layer(p: WaveformParams = WaveformParams(),
                     image: LogImageParams = LogImageParams()) -> F.GaborFilterbank:
    """The waveform CNN's learned filterbank: downsampled signal -> (frames, bands, 1) image in [-1, 1]."""
    return F.GaborFilterbank(p.filterbank_bands, p.filterbank_kernel_samples, p.filterbank_stride_samples,
                             p.filterbank_pool, p.target_rate_hz, p.filterbank_min_hz, p.filterbank_max_hz,
                             image.top_db, p.filterbank_kernel_scale, name="filterbank")


def log_mel_layer(p: LogMelParams = LogMelParams(), image: LogImageParams = LogImageParams()) -> F.LogMelSpectrogram:
    """The log-mel CNN's front end: waveform -> (frames, mel bins, 1) image in [-1, 1]."""
    return F.LogMelSpectrogram(AUDIO.sample_rate_hz, p.fft_length, p.stft_window_samples, p.stft_hop_samples,
                               p.num_mel_bins, p.mel_min_hz, p.mel_max_hz, image.top_db, name="log_mel")


# ----------------------------------------------------------------------------------------------- augmentation
def waveform_augmentation(aug: AugmentParams = AugmentParams(), seed: int = TrainParams().seed) -> list:
    """Training-only augmentation of the (peak-normalised) waveform, both networks."""
    return [F.RandomRelease(int(AUDIO.held_seconds * AUDIO.sample_rate_hz), AUDIO.sample_rate_hz,
                            *aug.release_tau_seconds, aug.release_probability, seed=seed + 6,
                            name="aug_release"),
            F.RandomTimeShift(int(aug.max_time_shift_seconds * AUDIO.sample_rate_hz), seed=seed,
                              name="aug_time_shift"),
            F.RandomTilt(aug.waveform_tilt_max_coef, seed=seed + 1, name="aug_tilt"),
            F.RandomNoise(aug.noise_snr_db_min, aug.noise_snr_db_max, aug.noise_probability, seed=seed + 2,
                          name="aug_noise")]


def spectral_augmentation(aug: AugmentParams = AugmentParams(), image: LogImageParams = LogImageParams(),
                          seed: int = TrainParams().seed) -> list:
    """Training-only augmentation of a (frames, bands, 1) log image in [-1, 1] units (log-mel or learned
    filterbank)."""
    return [
        F.RandomFreqShift(aug.freq_shift_max_bins, seed=seed + 5, name="aug_freq_shift"),
        F.RandomMelEQ(aug.eq_max_tilt_db, aug.eq_max_bumps_db, *aug.eq_bump_cycles, image.top_db, seed=seed + 3,
                      name="aug_mel_eq"),
        F.SpecMask(aug.spec_freq_mask_bins, aug.spec_time_mask_frames, seed=seed + 4, name="aug_spec_mask")]


# ----------------------------------------------------------------------------------------------- trunk and head
def _conv_block(filters: int, pool: tuple[int, int], net: ConvNetParams, name: str) -> list:
    block = [layers.Conv2D(filters, net.conv_kernel, padding="same", use_bias=False, name=f"{name}_conv"),
             layers.BatchNormalization(name=f"{name}_bn"),
             layers.ReLU(name=f"{name}_relu")]
    if pool != (1, 1):
        block.append(layers.MaxPooling2D(pool, name=f"{name}_pool"))
    return block


def _trunk(net: ConvNetParams) -> list:
    out = []
    for i, (filters, pool) in enumerate(CONV_LAYERS):
        out += _conv_block(filters, pool, net, f"block{i + 1}")
    return out


def _head(net: ConvNetParams, dropout: float) -> list:
    return [layers.GlobalAveragePooling2D(name="global_pool"),
            layers.Dropout(dropout, name="dropout"),
            layers.Dense(net.head_units, activation="relu", name="embedding"),
            layers.Dropout(dropout / 2, name="dropout_head"),
            layers.Dense(NUM_CLASSES, name="logits"),
            layers.Activation("softmax", dtype="float32", name="probabilities")]


# ----------------------------------------------------------------------------------------------- the networks
def build_waveform_cnn(p: WaveformParams = WaveformParams(), aug: AugmentParams | None = AugmentParams(),
                       train: TrainParams = TrainParams(), net: ConvNetParams = ConvNetParams(),
                       image: LogImageParams = LogImageParams()) -> keras.Model:
    """Raw-waveform CNN: peak-normalise -> anti-aliased downsampling to ``p.target_rate_hz`` -> learned
    filterbank (a log band-energy image) -> 2-D convs."""
    stack = [keras.Input((AUDIO.num_samples,), name="waveform"), F.PeakNormalize(name="peak_normalize")]
    if aug is not None:
        stack += waveform_augmentation(aug, train.seed)
    stack += [downsample_layer(p), filterbank_layer(p, image)]
    if aug is not None:
        stack += spectral_augmentation(aug, image, train.seed)
    stack += _trunk(net) + _head(net, train.dropout)
    return keras.Sequential(stack, name="waveform_cnn")


def build_logmel_cnn(p: LogMelParams = LogMelParams(), aug: AugmentParams | None = AugmentParams(),
                     train: TrainParams = TrainParams(), net: ConvNetParams = ConvNetParams(),
                     image: LogImageParams = LogImageParams()) -> keras.Model:
    """Log-mel CNN: peak-normalise -> log-mel image (inside the model) -> 2-D convs."""
    stack = [keras.Input((AUDIO.num_samples,), name="waveform"), F.PeakNormalize(name="peak_normalize")]
    if aug is not None:
        stack += waveform_augmentation(aug, train.seed)
    stack += [log_mel_layer(p, image)]
    if aug is not None:
        stack += spectral_augmentation(aug, image, train.seed)
    stack += _trunk(net) + _head(net, train.dropout)
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
