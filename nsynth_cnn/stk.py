"""Physical-model and FM instruments of the Synthesis ToolKit (STK, Debian package ``stk``) as corpus sources.

STK's ``stk-demo`` plays a SKINI score with one of its instrument classes and writes the result to a file.
Its classes model how the sound is made (a reed on a cylindrical or conical bore, a bowed or plucked
string, a jet across a flute's embouchure, struck modal bars, FM electric pianos and organs, formant
voices), so each one sounds unlike every sample set of the SoundFonts. One *instrument* here is one STK
class with one random setting of its control changes (reed stiffness, noise, bow pressure, stick hardness,
...), drawn per instrument and kept for all its notes.

Table: STK class -> (family, NSynth source, {control number: (low, high)} drawn uniformly on 0-128, whether
the note sustains). The control numbers are the ones STK documents for each class (its ``controlChange``).
A sustaining note that does not speak (a physical model that fails to oscillate at that pitch and
velocity) is dropped, as is one clipped at STK's output limit of +-1: :func:`render_note` returns None.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import numpy as np

from .params import AUDIO

STK_DEMO = "stk-demo"
FAKETIME = "faketime"     # STK seeds its noise (breath, bow, pluck) from the clock: a fixed clock makes renders repeat
VIB = {11: (0, 60), 1: (0, 30)}            # vibrato / LFO rate and depth: none to moderate
VOICES = {
    "Clarinet": ("reed", "synthetic", {2: (20, 110), 4: (0, 50), 128: (50, 110), **VIB}, True),
    "BlowHole": ("reed", "synthetic", {2: (20, 110), 4: (0, 50), 11: (0, 40), 1: (0, 30), 128: (50, 110)}, True),
    "Saxofony": ("reed", "synthetic", {2: (20, 110), 26: (45, 90), 4: (0, 50), 11: (10, 90), 29: (0, 60),
                                       1: (0, 30), 128: (50, 110)}, True),
    "Flute": ("flute", "synthetic", {2: (30, 100), 4: (0, 60), 128: (70, 128), **VIB}, True),
    "Recorder": ("flute", "synthetic", {2: (0, 100), 4: (0, 60), 16: (20, 110), 128: (70, 128), **VIB}, True),
    "PercFlut": ("flute", "synthetic", {2: (10, 100), 4: (10, 110), 128: (40, 128), **VIB}, True),
    "Bowed": ("string", "synthetic", {2: (30, 110), 4: (10, 100), 128: (70, 128), **VIB}, True),
    "Plucked": ("guitar", "synthetic", {}, False),
    "StifKarp": ("guitar", "synthetic", {4: (10, 110), 11: (40, 120), 1: (0, 80)}, False),
    "Mandolin": ("guitar", "synthetic", {2: (10, 120), 4: (10, 110), 11: (40, 120), 1: (0, 40)}, False),
    "Rhodey": ("keyboard", "electronic", {2: (10, 110), 4: (10, 110), 128: (40, 128), **VIB}, False),
    "Wurley": ("keyboard", "electronic", {2: (10, 110), 4: (10, 110), 128: (40, 128), **VIB}, False),
    "BeeThree": ("organ", "electronic", {2: (10, 110), 4: (10, 110), 128: (60, 128), **VIB}, True),
    "TubeBell": ("mallet", "synthetic", {2: (10, 110), 4: (10, 110), 128: (40, 128), 11: (0, 40), 1: (0, 20)}, False),
    "ModalBar": ("mallet", "synthetic", {16: (0, 8.99), 2: (20, 120), 4: (10, 110), 8: (0, 128), 128: (80, 128),
                                         11: (0, 40), 1: (0, 20)}, False),
    "FMVoices": ("vocal", "synthetic", {2: (0, 128), 4: (10, 110), 128: (60, 128), **VIB}, True),
    "VoicForm": ("vocal", "synthetic", {2: (90, 128), 4: (0, 60), 128: (60, 128), **VIB}, True),
    "Moog": ("bass", "synthetic", {2: (10, 110), 4: (0, 100), 128: (60, 128), 11: (0, 30), 1: (0, 10)}, True),
}
INTEGER_CONTROLS = {16}                     # preset selectors (ModalBar's 9 bars)


def available() -> bool:
    """stk-demo and faketime (Debian packages ``stk`` and ``faketime``) are both installed."""
    return shutil.which(STK_DEMO) is not None and shutil.which(FAKETIME) is not None


def voice_of(index: int) -> str:
    """Instruments cycle through the table, so any count covers every class evenly."""
    return sorted(VOICES)[index % len(VOICES)]


def random_controls(voice: str, rng: np.random.Generator) -> dict[int, float]:
    return {cc: float(np.floor(rng.uniform(lo, hi)) if cc in INTEGER_CONTROLS else rng.uniform(lo, hi))
            for cc, (lo, hi) in VOICES[voice][2].items()}


def score(pitch: int, velocity: int, controls: dict[int, float]) -> str:
    """SKINI: note-on with the controls, note-off after the held 3 s, then 1 s of release (delta times)."""
    lines = [f"NoteOn 0.0 1 {pitch} {velocity}"]
    lines += [f"ControlChange 0.0 1 {cc} {value:.2f}" for cc, value in controls.items()]
    lines += [f"NoteOff {AUDIO.held_seconds:.1f} 1 {pitch} {velocity}",
              f"NoteOff {AUDIO.note_seconds - AUDIO.held_seconds:.1f} 1 {pitch} 0"]
    return "\n".join(lines) + "\n"


def render_note(voice: str, controls: dict[int, float], pitch: int, velocity: int, rate: int,
                noise_seed: int = 0, min_sustain: float = 0.05) -> np.ndarray | None:
    """One 4 s note at ``rate`` Hz (float64 MAT output: no 16-bit rounding), or None if it does not sound.
    ``noise_seed`` picks the clock that seeds STK's noise generators, so the same arguments give the same note."""
    import datetime
    import scipy.io
    clock = datetime.datetime(2000, 1, 1) + datetime.timedelta(seconds=int(noise_seed))
    with tempfile.TemporaryDirectory(prefix="stk-") as tmp:
        ski, mat = os.path.join(tmp, "note.ski"), os.path.join(tmp, "note.mat")
        with open(ski, "w") as fh:
            fh.write(score(pitch, velocity, controls))
        command = [FAKETIME, "-f", clock.strftime("@%Y-%m-%d %H:%M:%S"), STK_DEMO, voice, "-s", str(rate),
                   "-om", mat, "-if", ski]
        proc = subprocess.run(command, cwd=tmp, capture_output=True, timeout=60)
        if proc.returncode != 0 or not os.path.isfile(mat):
            return None
        audio = np.asarray(next(v for k, v in scipy.io.loadmat(mat).items() if not k.startswith("__")
                                and k != "fs"), np.float64).ravel()
    n = int(AUDIO.note_seconds * rate)
    audio = np.pad(audio[:n], (0, max(0, n - len(audio))))
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.all(np.isfinite(audio)) or peak <= 0 or np.sum(np.abs(audio) >= 0.999) > 8:
        return None                         # broken, silent, or clipped at STK's +-1 output limit
    if VOICES[voice][3]:                    # a sustained note must still sound in the middle of its held part
        mid = audio[int(1.0 * rate):int(2.5 * rate)]
        if np.sqrt(np.mean(mid ** 2)) < min_sustain * peak:
            return None
    return audio.astype(np.float32)
