"""Gravis UltraSound (GUS) patch sets, rendered by TiMidity++, as corpus sources.

Debian's ``freepats`` package is a General-MIDI set of sampled instruments in GUS ``.pat`` files (GPL-2+ with
an exception for compositions that use them), another sample set unlike every SoundFont of the corpus: 8
reeds, 5 basses, 7 guitars, brass, strings and organs among its 58 melodic programs in 0-79. TinySoundFont
reads only SoundFonts, so each note is played by ``timidity`` (Debian package ``timidity``) from a one-note
MIDI file written with ``mido``: note-on, note-off after the held 3 s, then 1 s of release. TiMidity's own
reverb and chorus are off (the corpus adds its rooms itself).

An *instrument* is one program of one configuration file (sample set = the file's name, e.g. ``freepats``).
Only programs the file really lists are instruments: TiMidity would play a missing one with another patch.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile

import numpy as np

from ...params import AUDIO

TIMIDITY = "timidity"
FREEPATS_CFG = "/etc/timidity/freepats.cfg"
TICKS_PER_SECOND = 960          # mido's default tempo (120 bpm) at 480 ticks per beat


def available(cfg: str = FREEPATS_CFG) -> bool:
    """timidity and the configuration file (Debian packages ``timidity`` and ``freepats``) are installed."""
    return shutil.which(TIMIDITY) is not None and os.path.isfile(cfg)


def programs(cfg: str = FREEPATS_CFG) -> dict[int, str]:
    """GM program (0-based) -> patch file of the melodic bank 0 of a TiMidity configuration file."""
    found, bank = {}, None
    with open(cfg, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            words = line.split("#", 1)[0].split()
            if len(words) >= 2 and words[0] in ("bank", "drumset"):
                bank = int(words[1]) if words[0] == "bank" else None
            elif bank == 0 and len(words) >= 2 and re.fullmatch(r"\d+", words[0]) and int(words[0]) < 128:
                found[int(words[0])] = words[1]
    return found


def note_midi(path: str, program: int, pitch: int, velocity: int) -> None:
    """A one-note MIDI file: ``program`` plays ``pitch`` for the held 3 s, then 1 s of silence for the release."""
    import mido
    song = mido.MidiFile(ticks_per_beat=TICKS_PER_SECOND // 2)
    track = mido.MidiTrack()
    song.tracks.append(track)
    held = int(AUDIO.held_seconds * TICKS_PER_SECOND)
    release = int((AUDIO.note_seconds - AUDIO.held_seconds) * TICKS_PER_SECOND)
    track += [mido.Message("program_change", program=program, time=0),
              mido.Message("note_on", note=pitch, velocity=velocity, time=0),
              mido.Message("note_off", note=pitch, velocity=0, time=held),
              mido.MetaMessage("end_of_track", time=release)]
    song.save(path)


def render_note(program: int, pitch: int, velocity: int, rate: int,
                cfg: str = FREEPATS_CFG) -> np.ndarray | None:
    """One 4 s mono note at ``rate`` Hz, or None if TiMidity fails, or the note is silent or clipped."""
    import soundfile as sf
    with tempfile.TemporaryDirectory(prefix="gus-") as tmp:
        mid, wav = os.path.join(tmp, "note.mid"), os.path.join(tmp, "note.wav")
        note_midi(mid, program, pitch, velocity)
        command = [TIMIDITY, "-c", cfg, "-Ow", "--output-mono", "-s", str(rate), "-EFreverb=0", "-EFchorus=0",
                   "-A100", "-o", wav, mid]
        proc = subprocess.run(command, capture_output=True, timeout=60)
        if proc.returncode != 0 or not os.path.isfile(wav):
            return None
        audio, got_rate = sf.read(wav, dtype="float32")
    if got_rate != rate or audio.ndim != 1:
        return None
    n = int(AUDIO.note_seconds * rate)
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    if not audio.size or np.max(np.abs(audio)) <= 0 or np.sum(np.abs(audio) >= 0.999) > 8:
        return None                         # silent, or clipped at the 16-bit output's limit
    return audio
