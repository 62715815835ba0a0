"""Audio files (wav, flac, ogg, mp3, ...) -> one NSynth-format note: float32 mono, 16 kHz, 4 s, in [-1, 1].

Decoding is bounded by what is classified: at most the first :data:`MAX_DECODE_SECONDS` are read, block by
block, mixed to mono as they come, so a tiny, highly compressed file of many minutes and channels cannot fill
the memory. Bad files raise :class:`nsynth_cnn.schema.DataError` with a message that says what to do.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator

import numpy as np

from .params import AUDIO
from .schema import DataError


SILENCE_PEAK = 1e-4  # peak amplitude below which a recording counts as silent (-80 dBFS)
# Decoding is bounded by what is classified: at most the first MAX_DECODE_SECONDS of a file are decoded (the
# onset is searched in them, then 4 s from it are kept), block by block, each block averaged to mono and resampled
# to 16 kHz before the next is read. Memory is then a few MB whatever the file's length, rate or channel count
# (a 0.5 MB FLAC can hold minutes of 192 kHz 8-channel silence: 1.8 GB as float32 if decoded whole).
MAX_DECODE_SECONDS = 30.0
MAX_CHANNELS = 64                          # headers outside these limits are damaged files, not recordings
SAMPLE_RATE_RANGE_HZ = (1_000, 768_000)
DECODE_BLOCK_FRAMES = 16_384             # frames decoded per block (fewer when that is over 4 MB)
DECODE_BLOCK_BYTES = 4 << 20


class AudioWarning(UserWarning):
    """A recording that is classified but could not be read entirely as its header says (e.g. cut short)."""


def fit_length(audio: np.ndarray, num_samples: int = AUDIO.num_samples) -> np.ndarray:
    """Trim or zero-pad a mono waveform to ``num_samples``."""
    audio = np.asarray(audio, np.float32)[:num_samples]
    if audio.shape[0] < num_samples:
        audio = np.pad(audio, (0, num_samples - audio.shape[0]))
    return audio


def load_audio(source, *, context: str = "audio file", min_seconds: float = 0.05,
               reject_silent: bool = False, onset_trim: bool = False, name: str | None = None,
               on_warning=None, max_seconds: float = MAX_DECODE_SECONDS, tmpdir: str | None = None) -> np.ndarray:
    """Any common audio file -> float32 mono, 16 kHz, exactly 4 s, in [-1, 1].

    ``source`` is a path or a binary file object (e.g. ``io.BytesIO`` of an upload; ``name`` is then used in
    messages). Documented conversions: stereo/multichannel is averaged to mono; other sample rates are
    resampled to 16 kHz (soxr, high quality); shorter notes are zero padded and longer ones trimmed to 4 s
    (with ``onset_trim`` the leading silence is skipped first, so a long recording is classified from its
    onset). Only the first ``max_seconds`` are decoded (see :data:`MAX_DECODE_SECONDS`): the onset must lie in
    them. Headers with more than :data:`MAX_CHANNELS` channels or a rate outside :data:`SAMPLE_RATE_RANGE_HZ`
    are rejected before decoding. A file that is cut short or damaged part-way is classified from what could be
    decoded, with a warning: ``on_warning(message)`` when given, else an :class:`AudioWarning`.
    Formats libsndfile does not know go to audioread (ffmpeg, when installed); a file object is then copied
    into an unnamed temporary file (in ``tmpdir``) that disappears with the process.
    """
    import soundfile as sf
    is_path = isinstance(source, (str, os.PathLike))
    label = name or (os.fspath(source) if is_path else str(getattr(source, "name", "") or "upload"))
    warn = on_warning or (lambda msg: warnings.warn(msg, AudioWarning, stacklevel=3))
    if is_path:
        path = os.fspath(source)
        if os.path.isdir(path):
            raise DataError(f"{label}: is a folder, not an audio file. Pass the recordings in it as files, e.g. "
                            f"`{os.path.join(path, '*.wav')}` (the shell expands the pattern).")
        if not os.path.isfile(path):
            raise DataError(f"{label}: no such file.")
        size = os.path.getsize(path)
    else:
        start = source.tell()
        size = source.seek(0, os.SEEK_END) - start
        source.seek(start)
    if size == 0:
        raise DataError(f"{label}: the file is empty (0 bytes).")
    with contextlib.ExitStack() as stack:
        try:
            snd = stack.enter_context(sf.SoundFile(source))
        except Exception:  # noqa: BLE001 - not a format libsndfile knows: try audioread
            if not is_path:
                source.seek(start)
            rate, channels, total, blocks = _audioread_blocks(source, label, stack, tmpdir)
        else:
            rate, channels, total, blocks = snd.samplerate, snd.channels, snd.frames, _soundfile_blocks(snd)
            _warn_if_cut_short(snd, label, context, warn)
        _check_header(rate, channels, label)
        mono, frames = _decode_mono(blocks, rate, channels, int(np.ceil(max_seconds * rate)), label, context,
                                    total, warn)
    if frames == 0:
        raise DataError(f"{label}: the {context} holds no samples.")
    if frames / rate < min_seconds:
        raise DataError(f"{label}: the {context} is {frames / rate * 1000:.0f} ms long; at least "
                        f"{min_seconds * 1000:.0f} ms of sound is needed (NSynth notes are 4 s).")
    if not np.all(np.isfinite(mono)):
        raise DataError(f"{label}: the {context} contains NaN/inf samples; it is damaged.")
    peak = float(np.max(np.abs(mono))) if mono.size else 0.0
    if reject_silent and peak < SILENCE_PEAK:
        part = f" in its first {max_seconds:g} s (all that is read)" if total and total > frames else ""
        raise DataError(f"{label}: the {context} is silent{part} (peak {peak:.1e}); there is no note to "
                        "classify.")
    if onset_trim and peak >= SILENCE_PEAK:
        onset = int(np.argmax(np.abs(mono) >= 0.01 * peak))
        mono = mono[max(0, onset - AUDIO.sample_rate_hz // 100):]
    if peak > 1.0:
        mono = mono / peak
    return fit_length(mono)


def _check_header(rate, channels: int, label: str) -> None:
    lo, hi = SAMPLE_RATE_RANGE_HZ
    if not 1 <= channels <= MAX_CHANNELS:
        raise DataError(f"{label}: the header says {channels} channels; 1 to {MAX_CHANNELS} are accepted. The file "
                        "is damaged or not a recording: export the note as mono or stereo wav/flac.")
    if not lo <= rate <= hi:
        raise DataError(f"{label}: the header says {rate:,} samples/s; {lo:,} to {hi:,} Hz are accepted. The file "
                        "is damaged, or export it at a common rate (16, 44.1 or 48 kHz).")


def _soundfile_blocks(snd) -> Iterator[np.ndarray]:
    """(frames, channels) float32 blocks of an open ``soundfile.SoundFile`` (one reused buffer)."""
    per = max(1024, min(DECODE_BLOCK_FRAMES, DECODE_BLOCK_BYTES // (4 * snd.channels)))
    buf = np.empty((per, snd.channels), np.float32)
    while True:
        block = snd.read(frames=per, dtype="float32", always_2d=True, out=buf)
        if len(block):
            yield block
        if len(block) < per:
            return


def _warn_if_cut_short(snd, label: str, context: str, warn) -> None:
    """WAV whose header announces more audio than the file holds (libsndfile reads what is there)."""
    m = re.search(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", snd.extra_info or "", re.M)
    if m and int(m.group(2)) < int(m.group(1)) and snd.frames:
        have = snd.frames / snd.samplerate
        said = have * int(m.group(1)) / max(1, int(m.group(2)))
        warn(f"{label}: the {context} is cut short: its header announces {said:.2f} s of audio but the file "
             f"holds {have:.2f} s (an interrupted download or copy?); classified what is there.")


def _decode_mono(blocks, rate, channels, max_frames, label, context, total, warn) -> tuple[np.ndarray, int]:
    """At most ``max_frames`` of ``blocks`` as 16 kHz mono float32 (each block averaged and resampled as read),
    and the number of source frames read. A read error after some audio is a warning; before any, an error."""
    resampler = None
    if rate != AUDIO.sample_rate_hz:
        import soxr
        resampler = soxr.ResampleStream(rate, AUDIO.sample_rate_hz, 1, dtype="float32", quality="HQ")
    parts, frames, it = [], 0, iter(blocks)
    while frames < max_frames:
        try:
            block = next(it)
        except StopIteration:
            break
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - decoder errors are the file's fault
            if frames == 0:
                raise DataError(f"{label}: not a readable audio file ({type(err).__name__}: {str(err)[:120]}). "
                                "Use wav, flac, ogg or mp3.") from None
            said = f" of the {total / rate:.2f} s its header announces" if total else ""
            warn(f"{label}: the {context} is damaged or cut short after {frames / rate:.2f} s{said} "
                 f"({str(err)[:120]}); classified what could be decoded.")
            break
        block = block[:max_frames - frames]
        frames += len(block)
        mono = block[:, 0].copy() if channels == 1 else block.mean(axis=1)
        parts.append(resampler.resample_chunk(mono) if resampler is not None else mono)
    if resampler is not None:
        parts.append(resampler.resample_chunk(np.zeros(0, np.float32), last=True))
    return (np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)), frames


def _audioread_blocks(source, label: str, stack: contextlib.ExitStack, tmpdir: str | None):
    """Fallback decoder (audioread: ffmpeg, gstreamer, ... when installed) for formats libsndfile does not know:
    ``(rate, channels, frames or None, blocks)``. A file object is copied into an unnamed temporary file (removed
    by the OS even if this process dies) that the decoder opens through /proc."""
    unreadable = DataError(f"{label}: not a readable audio file. Use wav, flac, ogg or mp3.")
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
    else:
        tmp = stack.enter_context(tempfile.TemporaryFile(prefix="nsynth-audio-", dir=tmpdir))
        shutil.copyfileobj(source, tmp)
        tmp.flush()
        path = f"/proc/{os.getpid()}/fd/{tmp.fileno()}"
        if not os.path.exists(path):
            raise unreadable
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import audioread
            f = stack.enter_context(audioread.audio_open(path))
        rate, channels, seconds = int(f.samplerate), int(f.channels), f.duration
    except Exception as err:  # noqa: BLE001 - no backend / unknown format
        raise DataError(f"{label}: not a readable audio file ({type(err).__name__}). Use wav, flac, ogg or "
                        "mp3.") from None
    _check_header(rate, channels, label)

    def blocks():
        for buf in f:   # 16-bit little-endian interleaved PCM
            yield (np.frombuffer(buf, "<i2").astype(np.float32) / 32768.0).reshape(-1, channels)

    return rate, channels, int(seconds * rate) if seconds else None, blocks()
