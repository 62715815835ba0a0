"""Every tunable number of the project, one frozen dataclass per concern (YAMNet's ``params.py`` style).

Units are in the names (``_hz``, ``_seconds``, ``_samples``). Derived values are properties, so nothing
that depends on another value can drift out of sync with it.
"""
from __future__ import annotations

import dataclasses

# NSynth's instrument_family ids 0..10; id 9 (synth_lead) has no test notes and is dropped.
NSYNTH_FAMILY_NAMES = (
    "bass", "brass", "flute", "guitar", "keyboard", "mallet",
    "organ", "reed", "string", "synth_lead", "vocal",
)
SYNTH_LEAD_ID = 9
# The 10 classes our models predict, in NSynth order without synth_lead.
FAMILIES = tuple(name for i, name in enumerate(NSYNTH_FAMILY_NAMES) if i != SYNTH_LEAD_ID)
NUM_CLASSES = len(FAMILIES)
MODEL_NAMES = ("waveform", "logmel")      # the two networks; saved as weights/<name>_cnn.keras
NSYNTH_SOURCE_NAMES = ("acoustic", "electronic", "synthetic")
NSYNTH_QUALITY_NAMES = (
    "bright", "dark", "distortion", "fast_decay", "long_release",
    "multiphonic", "nonlinear_env", "percussive", "reverb", "tempo-synced",
)


def nsynth_family_to_label(family_id: int) -> int:
    """NSynth instrument_family id (0..10) -> class index (0..9); -1 for synth_lead."""
    if family_id == SYNTH_LEAD_ID:
        return -1
    if not 0 <= family_id < len(NSYNTH_FAMILY_NAMES):
        raise ValueError(f"instrument_family {family_id} is not an NSynth family id (0..10)")
    return family_id if family_id < SYNTH_LEAD_ID else family_id - 1


def label_to_nsynth_family(label: int) -> int:
    """Class index (0..9) -> NSynth instrument_family id."""
    return label if label < SYNTH_LEAD_ID else label + 1


@dataclasses.dataclass(frozen=True)
class AudioParams:
    """The NSynth note format every model input follows."""
    sample_rate_hz: int = 16_000
    note_seconds: float = 4.0
    held_seconds: float = 3.0          # note-on time; the last second is the release

    @property
    def num_samples(self) -> int:
        return int(round(self.sample_rate_hz * self.note_seconds))


@dataclasses.dataclass(frozen=True)
class LogImageParams:
    """The (time, band) log image both front ends make (the log-mel spectrogram and the waveform CNN's learned
    filterbank), so that the same spectral augmentations apply to both: band power in dB relative to each note's
    peak, floored at ``-top_db`` and mapped ``[-top_db, 0] dB -> [-1, 1]``."""
    top_db: float = 80.0                  # dB kept below each note's peak (the image's floor, -1)


@dataclasses.dataclass(frozen=True)
class WaveformParams:
    """Waveform CNN front end.

    8 kHz keeps everything up to 4 kHz: the fundamentals of all but NSynth's top ~5 pitches (C8 = 4186 Hz)
    and the first harmonics that carry timbre for most notes, at half the cost of 16 kHz. A 4 kHz rate
    (2 kHz Nyquist) would drop the second harmonic of every note above C6 and the brightness that tells
    brass from flute. The low-pass is a windowed-sinc FIR applied before decimation, so nothing above the
    new Nyquist folds back (aliases) into the band we keep.
    """
    target_rate_hz: int = 8_000
    antialias_taps: int = 63
    antialias_cutoff_ratio: float = 0.9      # cutoff as a fraction of the new Nyquist
    antialias_kaiser_beta: float = 8.0
    # learned filterbank on the 8 kHz signal (features.GaborFilterbank), mel-initialised:
    filterbank_bands: int = 64
    filterbank_kernel_samples: int = 256     # 32 ms: ~30 Hz resolution, enough to separate low bass partials
    filterbank_stride_samples: int = 32      # 4 ms
    filterbank_pool: int = 8                 # energies averaged to 32 ms frames: 125 per note (as the log-mel hop)
    filterbank_min_hz: float = 30.0
    filterbank_max_hz: float = 3_900.0
    filterbank_kernel_scale: float = 1e-3    # filters = scale * weights: their taps learn ~1000x slower than with
                                             # 1.0 (features.GaborFilterbank; r8's 1.0 lost the band-pass shape)

    @property
    def downsample_factor(self) -> int:
        """16 kHz notes are decimated by this whole factor to ``target_rate_hz``."""
        return AudioParams().sample_rate_hz // self.target_rate_hz


@dataclasses.dataclass(frozen=True)
class LogMelParams:
    """Log-mel front end of the spectrogram CNN (computed inside the model)."""
    stft_window_samples: int = 1024      # 64 ms at 16 kHz
    stft_hop_samples: int = 512          # 32 ms: 126 frames per note
    fft_length: int = 1024
    num_mel_bins: int = 64
    mel_min_hz: float = 30.0
    mel_max_hz: float = 8_000.0

    def num_frames(self, audio: AudioParams = AudioParams()) -> int:
        return audio.num_samples // self.stft_hop_samples + 1


@dataclasses.dataclass(frozen=True)
class AugmentParams:
    """Training-only augmentation layers (identity at inference)."""
    noise_snr_db_min: float = 25.0        # additive white noise at a random SNR in [min, max]
    noise_snr_db_max: float = 60.0
    noise_probability: float = 0.5
    release_probability: float = 0.8      # re-shape the release after note-off (3 s) ...
    release_tau_seconds: tuple[float, float] = (0.01, 0.5)   # ... with exp decay, tau log-uniform in this range
    max_time_shift_seconds: float = 0.1   # random circular-free delay (zero padded) of the onset
    waveform_tilt_max_coef: float = 0.9   # random first-order EQ y[t] = x[t] + a*x[t-1], a ~ U(-max, max)
    eq_max_tilt_db: float = 12.0          # random spectral tilt across the band, +- this
    eq_max_bumps_db: float = 6.0          # random smooth EQ curve amplitude ...
    eq_bump_cycles: tuple[float, float] = (0.5, 3.0)   # ... a sine of this many cycles across the band, U(min, max)
    freq_shift_max_bins: int = 3          # random shift of the log-mel image, +- mel bins
    spec_freq_mask_bins: int = 8         # SpecAugment-style masks on the log-mel image
    spec_time_mask_frames: int = 12


@dataclasses.dataclass(frozen=True)
class TrainParams:
    batch_size: int = 64
    epochs: int = 12                     # set per stage by RECIPE (train.stage_params)
    learning_rate: float = 2e-3
    min_learning_rate_ratio: float = 0.01    # the cosine decay ends at this fraction of learning_rate
    weight_decay: float = 1e-4
    warmup_epochs: int = 1
    label_smoothing: float = 0.05
    early_stopping_patience: int = 6
    shuffle_buffer: int = 4096           # examples; see data.py on family-ordered files
    class_balance: str = "weights"       # "weights" (loss weights) | "none"
    seed: int = 1234
    dropout: float = 0.3
    distill_weight: float = 0.5          # with a teacher (train --teacher): share of its probabilities in the target
    distill_temperature: float = 2.0     # the teacher's probabilities softened as softmax(log p / T)


@dataclasses.dataclass(frozen=True)
class ConvNetParams:
    """The 2-D convolutional trunk and classifier head both networks share after their front end (the trunk's
    filters and pooling per block: ``models.CONV_LAYERS``; dropout: :class:`TrainParams`)."""
    conv_kernel: tuple[int, int] = (3, 3)    # (time, band) kernel of every conv block
    head_units: int = 128                    # the dense "embedding" layer before the class logits


AUDIO = AudioParams()


@dataclasses.dataclass(frozen=True)
class Stage:
    """One training run of one network, as a step of a :data:`RECIPE`.

    ``out``: "" writes the network into the weights folder; another name writes it into that hidden sub-folder
    (an intermediate network, removed once the recipe is done). ``init_from``: the ``out`` of an earlier stage
    whose network this one starts from (fine-tuning). ``teacher``: distil the weights folder's log-mel CNN
    into this network (targets mix the label with its probabilities: ``TrainParams.distill_weight``).
    ``learning_rate`` / ``warmup_epochs``: None = :class:`TrainParams`' value.
    """
    model: str
    epochs: int
    out: str = ""
    init_from: str | None = None
    teacher: bool = False
    learning_rate: float | None = None
    warmup_epochs: int | None = None


# The shipped recipe (docs/experiments.md, runs r8 and r13): the log-mel CNN for 12 epochs; the waveform CNN for
# 12, then 5 more at a lower learning rate with the log-mel CNN as its teacher. The notebook's train mode,
# `make train`, `make weights` and `python -m nsynth_cnn train` all run this; only data paths and epochs differ.
RECIPE = (
    Stage("logmel", 12),
    Stage("waveform", 12, out=".waveform-base"),
    Stage("waveform", 5, init_from=".waveform-base", teacher=True, learning_rate=5e-4, warmup_epochs=0),
)


@dataclasses.dataclass(frozen=True)
class CpuCost:
    """Training seconds per note per epoch on 2 CPU cores, to tell a user how long a CPU run will take (before
    it starts). Measured from the shipped histories (``epoch_seconds``; 32,195 training notes, this project's
    2-core build machine): log-mel CNN 12 epochs of 241-325 s; waveform CNN 5 distillation epochs of 197-263 s."""
    logmel_seconds_per_note: float = 0.0087
    waveform_seconds_per_note: float = 0.0071
    measured_cores: int = 2
