"""Render an NSynth-format corpus from General-MIDI SoundFonts and single-note recordings.

Protocol (as NSynth): 16 kHz mono, note held 3 s then released for 1 s, MIDI pitches within each
instrument's sensible range (21-108), velocities from {25, 50, 75, 100, 127}. An *instrument* is one
(sample set, bank, program) or one recorded instrument folder; splits are by instrument, so train, valid and
test share none. Output per split: shuffled NSynth-schema TFRecord shards + the JSON+wav layout +
``stats.json``; ``instruments.csv`` lists every instrument with its source and split.
"""
from __future__ import annotations

import csv
import dataclasses
import glob
import hashlib
import json
import os
import re
import warnings
from collections import Counter
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from ... import data, schema, writers
from ...params import AUDIO, FAMILIES, nsynth_family_to_label
from .. import REPO_ROOT
from ...audio import fit_length, load_audio

VELOCITIES = (25, 50, 75, 100, 127)
SPLITS = ("train", "valid", "test")

# General-MIDI program (0-based) -> (NSynth family, NSynth source). Programs not listed are skipped
# (synth leads 80-87 are NSynth's dropped synth_lead family; pads, effects, percussion fit no family).
# Decisions on ambiguous programs: harpsichord/clavinet -> keyboard; accordions -> organ (GM's organ group);
# harmonica -> reed (free reed); harp, pizzicato -> string; timpani, orchestra hit -> skipped;
# sitar/banjo/shamisen/koto -> guitar (plucked strings); kalimba, tinkle bell, steel drums -> mallet;
# bagpipe, shanai -> reed; fiddle -> string; choir pad (91) -> vocal.
_GM_RANGES = [
    (range(0, 2), "keyboard", "acoustic"), (range(2, 3), "keyboard", "electronic"),
    (range(3, 4), "keyboard", "acoustic"), (range(4, 6), "keyboard", "electronic"),
    (range(6, 8), "keyboard", "acoustic"),
    (range(8, 16), "mallet", "acoustic"),
    (range(16, 19), "organ", "electronic"), (range(19, 22), "organ", "acoustic"),
    (range(22, 23), "reed", "acoustic"), (range(23, 24), "organ", "acoustic"),
    (range(24, 27), "guitar", "acoustic"), (range(27, 32), "guitar", "electronic"),
    (range(32, 33), "bass", "acoustic"), (range(33, 38), "bass", "electronic"),
    (range(38, 40), "bass", "synthetic"),
    (range(40, 47), "string", "acoustic"), (range(48, 50), "string", "acoustic"),
    (range(50, 52), "string", "synthetic"),
    (range(52, 54), "vocal", "acoustic"), (range(54, 55), "vocal", "synthetic"),
    (range(56, 62), "brass", "acoustic"), (range(62, 64), "brass", "synthetic"),
    (range(64, 72), "reed", "acoustic"),
    (range(72, 80), "flute", "acoustic"),
    (range(91, 92), "vocal", "synthetic"),
    (range(104, 108), "guitar", "acoustic"), (range(108, 109), "mallet", "acoustic"),
    (range(109, 110), "reed", "acoustic"), (range(110, 111), "string", "acoustic"),
    (range(111, 112), "reed", "acoustic"), (range(112, 113), "mallet", "acoustic"),
    (range(114, 115), "mallet", "acoustic"),
]
GM_FAMILY = {prog: (fam, src) for r, fam, src in _GM_RANGES for prog in r}

# Natural MIDI pitch range per family. Notes are drawn from this range widened to at least
# SHARED_PITCH_RANGE, so that pitch alone does not give the family away (NSynth's notes cover 21-108
# wherever an instrument sounds; its test notes cluster around middle C for every family).
SHARED_PITCH_RANGE = (36, 84)
FAMILY_PITCH_RANGE = {
    "bass": (28, 67), "brass": (40, 84), "flute": (55, 96), "guitar": (40, 84), "keyboard": (21, 108),
    "mallet": (48, 100), "organ": (24, 96), "reed": (36, 86), "string": (28, 96), "vocal": (43, 84),
}

# Recording folder name -> (family, source). Two layouts of single-note recordings are read:
# Philharmonia (`../shared/samples/philharmonia/<instrument>/<instrument>_<note>_<length>_<dynamic>_...mp3`)
# and tonejs-instruments (npm `tonejs-instrument-<name>-mp3`, fetched by `make recordings` into
# sources/tonejs/<name>/<note>.mp3, e.g. `As2.mp3`). double-bass/contrabass: NSynth files upright basses under
# `bass`; harmonium (GM 20, reed organ) -> organ; harp -> string (GM 46), as in the GM table above.
PHILHARMONIA_FAMILY = {
    "banjo": "guitar", "bass-clarinet": "reed", "bassoon": "reed", "cello": "string", "clarinet": "reed",
    "contrabassoon": "reed", "cor-anglais": "reed", "double-bass": "bass", "flute": "flute",
    "french-horn": "brass", "guitar": "guitar", "mandolin": "guitar", "oboe": "reed", "saxophone": "reed",
    "trombone": "brass",
}
RECORDING_FAMILY = {name: (fam, "acoustic") for name, fam in PHILHARMONIA_FAMILY.items()} | {
    "bass-electric": ("bass", "electronic"), "contrabass": ("bass", "acoustic"),
    "guitar-acoustic": ("guitar", "acoustic"), "guitar-electric": ("guitar", "electronic"),
    "guitar-nylon": ("guitar", "acoustic"), "harmonium": ("organ", "acoustic"), "harp": ("string", "acoustic"),
    "organ": ("organ", "acoustic"), "piano": ("keyboard", "acoustic"), "trumpet": ("brass", "acoustic"),
    "tuba": ("brass", "acoustic"), "violin": ("string", "acoustic"), "xylophone": ("mallet", "acoustic"),
}
# npm package versions (tonejs-instrument-<name>-mp3, MIT; fetched by `make recordings`, never committed)
TONEJS_INSTRUMENTS = {
    "bass-electric": "1.1.2", "bassoon": "1.1.2", "cello": "1.1.1", "clarinet": "1.1.2", "contrabass": "1.1.2",
    "flute": "1.1.2", "french-horn": "1.1.2", "guitar-acoustic": "1.1.2", "guitar-electric": "1.1.1",
    "guitar-nylon": "1.1.1", "harmonium": "1.1.1", "harp": "1.1.1", "organ": "1.1.1", "piano": "1.1.2",
    "saxophone": "1.1.2", "trombone": "1.1.2", "trumpet": "1.1.2", "tuba": "1.1.2", "violin": "1.1.1",
    "xylophone": "1.1.2",
}
TONEJS_DIR = "sources/tonejs"
DYNAMIC_VELOCITY = {"pianissimo": 25, "piano": 50, "mezzo-piano": 50, "mezzo-forte": 75, "forte": 100,
                    "fortissimo": 127}

# Debian SoundFont packages (installed by `make setup`). MuseScore_General and FluidR3Mono are derived
# from FluidR3: they form one sample family, kept together in the held-out test split.
DEBIAN_SOUNDFONTS = (
    "/usr/share/sounds/sf2/FluidR3_GM.sf2", "/usr/share/sounds/sf3/FluidR3Mono_GM.sf3",
    "/usr/share/sounds/sf3/MuseScore_General.sf3", "/usr/share/sounds/sf2/TimGM6mb.sf2",
    "/usr/share/sounds/sf2/sf_GMbank.sf2", "/usr/share/sounds/sf2/OPL-3_FM_128M.sf2",
)
SHARED = os.path.join(REPO_ROOT, "..", "shared")
DEFAULT_SAMPLES = (os.path.join(SHARED, "samples", "philharmonia"),)
DEFAULT_SOUNDFONTS = DEBIAN_SOUNDFONTS + (os.path.join(SHARED, "soundfonts"),)
TEST_SETS = ("FluidR3_GM", "FluidR3Mono_GM", "MuseScore_General")  # held out whole: unseen sample set


@dataclasses.dataclass(frozen=True)
class CorpusParams:
    notes_per_instrument: int = 10
    valid_fraction: float = 0.12       # of the non-test instruments, drawn by instrument
    test_sets: tuple[str, ...] = TEST_SETS
    shards: int = 16                   # train TFRecord shards (read interleaved)
    seed: int = 0
    min_peak: float = 1e-3             # renders quieter than this (-60 dBFS) count as silent and are redrawn
    render_rate_hz: int = 48_000       # synthesise at 48 kHz, then resample (soxr) to 16 kHz: TinySoundFont's
                                       # linear interpolation would otherwise alias high notes into the band
    peak: float = 0.9                  # every note is peak-normalised, as NSynth's notes are
    reverb_probability: float = 0.5    # share of notes given a random synthetic room (render-time augmentation)
    reverb_rt60_seconds: tuple[float, float] = (0.2, 1.2)
    reverb_wet: tuple[float, float] = (0.05, 0.5)
    recordings_per_instrument: int = 48  # real recordings are scarce: keep up to this many per folder
    synth_instruments: int = 300       # procedural electronic/synthetic instruments (synth.py); 0 = none
    bank_variations: bool = True       # also GS-style variation presets (banks 1-127) of complete banks
                                       # (corpus v5, the shipped weights, run r8 of docs/experiments.md); False = v4
    freepats: bool = False             # the programs of Debian's freepats GUS patch set (gus.py, rendered by
                                       # TiMidity++); False = none (v5). Left out, with a warning, where missing


@dataclasses.dataclass(frozen=True)
class Instrument:
    sample_set: str     # e.g. "SGM-V2.01", "TimGM6mb", "philharmonia"
    path: str           # SoundFont file, or recording folder
    program: int        # GM program (-1 for recordings)
    family: str
    source: str
    kind: str           # "soundfont" | "recording" | "synth" | "gus"
    bank: int = 0       # SoundFont bank: 0 = the GM preset, 1-127 = a GS-style variation of the program

    @property
    def key(self) -> str:
        prog = self.program if self.program >= 0 else os.path.basename(self.path)
        return f"{self.sample_set}/{prog}" if self.bank == 0 else f"{self.sample_set}/{self.bank}:{prog}"


# ----------------------------------------------------------------------------------------------- discovery
def _set_name(path: str) -> str:
    return re.sub(r"\.(sf2|sf3)$", "", os.path.basename(path), flags=re.I)


def bank_variations(path: str, max_similarity: float = 0.98) -> list[tuple[int, int]]:
    """``(bank, program)`` of the variation presets (banks 1-127) of a complete SoundFont whose program has
    a family and that sounds unlike the program's bank-0 preset. GS-style banks hold e.g. "12-String Guitar",
    "Church Organ 2", "Synth Bass 4", but also presets that play the bank-0 samples with a modulator the
    renderer ignores ("Detuned EP 1"). So a variation is kept only if it is named unlike the bank-0 preset
    and a probe note (middle C, 0.5 s) correlates below ``max_similarity`` with the bank-0 preset's."""
    import tinysoundfont
    synth = tinysoundfont.Synth(samplerate=AUDIO.sample_rate_hz)
    try:
        sfid = synth.sfload(path)
    except Exception:
        return []

    def probe(bank: int, prog: int) -> np.ndarray:
        synth.notes_off()
        synth.sounds_off()
        synth.generate(AUDIO.sample_rate_hz // 4)
        synth.program_select(0, sfid, bank, prog)
        synth.noteon(0, 60, 100)
        return np.frombuffer(synth.generate(AUDIO.sample_rate_hz // 2), np.float32)

    found = []
    for prog in sorted(GM_FAMILY):
        base_name = synth.sfpreset_name(sfid, 0, prog)
        base = probe(0, prog) if base_name is not None else None
        for bank in range(1, 128):
            name = synth.sfpreset_name(sfid, bank, prog)
            if name is None or name.strip().lower() == (base_name or "").strip().lower():
                continue
            if base is not None:
                other = probe(bank, prog)
                if np.std(base) > 0 and np.std(other) > 0 and np.corrcoef(base, other)[0, 1] > max_similarity:
                    continue
            found.append((bank, prog))
    return found


def discover(soundfont_paths, sample_paths, synth_instruments: int = 0,
             variations: bool = False, freepats: bool = False) -> list[Instrument]:
    """Every instrument in the given SoundFont files/folders and recording folders, deduplicated, plus
    ``synth_instruments`` procedural ones (sample set ``procedural``; family by :func:`synth.family_of`),
    with ``variations`` the variation presets of complete banks (:func:`bank_variations`), then with
    ``freepats`` the GM programs of the freepats GUS patch set that have a family (sample set ``freepats``; a
    yardstick, ``make evaluate-freepats``). Each addition comes after
    the earlier ones, so the instruments (and their names) of a corpus without it keep their order."""
    from . import gus, synth
    found, seen, varied = [], set(), []
    for p in soundfont_paths:
        if os.path.isdir(p):
            per_prog = glob.glob(os.path.join(p, "**", "per-program", "*", "[0-9][0-9][0-9].sf[23]"),
                                 recursive=True)
            for f in sorted(per_prog):
                prog = int(os.path.basename(f)[:3])
                if prog in GM_FAMILY:
                    fam, src = GM_FAMILY[prog]
                    found.append(Instrument(os.path.basename(os.path.dirname(f)), f, prog, fam, src, "soundfont"))
            banks = [f for f in sorted(glob.glob(os.path.join(p, "**", "*.sf[23]"), recursive=True))
                     if "per-program" not in f]
        elif os.path.isfile(p):
            banks = [p]
        else:
            continue
        for f in banks:
            real = os.path.realpath(f)
            if real in seen:
                continue
            seen.add(real)
            for prog, (fam, src) in sorted(GM_FAMILY.items()):
                found.append(Instrument(_set_name(f), real, prog, fam, src, "soundfont"))
            if variations:
                varied += [Instrument(_set_name(f), real, prog, *GM_FAMILY[prog], "soundfont", bank)
                           for bank, prog in bank_variations(real)]
    for p in sample_paths:
        for folder in sorted(glob.glob(os.path.join(p, "*"))):
            name = os.path.basename(folder)
            if os.path.isdir(folder) and name in RECORDING_FAMILY:
                found.append(Instrument(os.path.basename(os.path.normpath(p)), folder, -1,
                                        *RECORDING_FAMILY[name], "recording"))
    for i in range(synth_instruments):
        fam = synth.family_of(i)
        found.append(Instrument("procedural", "procedural", i, fam, synth.SYNTH_FAMILIES[fam][0], "synth"))
    if freepats and not gus.available():
        warnings.warn(f"{gus.TIMIDITY} or {gus.FREEPATS_CFG} not found: the corpus is rendered without the freepats "
                      "instruments (install the Debian packages timidity and freepats: make soundfonts)", stacklevel=2)
        freepats = False
    played = [Instrument("freepats", gus.FREEPATS_CFG, prog, *GM_FAMILY[prog], "gus")
               for prog in (sorted(gus.programs()) if freepats else []) if prog in GM_FAMILY]
    return found + varied + played


def split_of(inst: Instrument, p: CorpusParams) -> str:
    if inst.sample_set in p.test_sets:
        return "test"
    h = int(hashlib.sha1(f"{p.seed}:{inst.key}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "valid" if h < p.valid_fraction else "train"


def fetch_tonejs(dest: str = TONEJS_DIR) -> list[str]:
    """Download the tonejs-instruments sample sets from the npm registry (``npm pack``, pinned versions) and
    unpack each into ``dest/<instrument>/`` (its ``<note>.mp3`` files): recording folders for ``--samples``.
    Folders already there are kept. Returns the instrument folders."""
    import shutil
    import subprocess
    import tarfile
    import tempfile
    if shutil.which("npm") is None:
        raise schema.DataError("npm not found: install Node.js and npm (Debian: apt-get install npm) to fetch the "
                             "tonejs-instruments recordings, or render the corpus without them")
    folders = []
    for name, version in TONEJS_INSTRUMENTS.items():
        folder = os.path.join(dest, name)
        folders.append(folder)
        if glob.glob(os.path.join(folder, "*.mp3")):
            continue
        with tempfile.TemporaryDirectory() as tmp:
            spec = f"tonejs-instrument-{name}-mp3@{version}"
            run = subprocess.run(["npm", "pack", "--silent", spec], cwd=tmp, capture_output=True, text=True)
            tgz = glob.glob(os.path.join(tmp, "*.tgz"))
            if run.returncode or not tgz:
                raise schema.DataError(f"npm pack {spec} failed ({run.stderr.strip()[-200:]}): check that the npm "
                                     "registry is reachable")
            unpacked = os.path.join(tmp, name)          # moved into place whole: an interrupted fetch
            with tarfile.open(tgz[0]) as tar:             # leaves no half-filled folder that looks done
                for member in tar.getmembers():
                    if member.isfile() and member.name.endswith(".mp3"):
                        member.name = os.path.basename(member.name)
                        tar.extract(member, unpacked, filter="data")
            os.makedirs(dest, exist_ok=True)
            shutil.rmtree(folder, ignore_errors=True)
            shutil.move(unpacked, folder)
    return folders


# ----------------------------------------------------------------------------------------------- rendering
def _rng(inst: Instrument, seed: int) -> np.random.Generator:
    key = f"{seed}:{inst.key}"
    return np.random.default_rng(int(hashlib.sha1(key.encode()).hexdigest()[:12], 16))


def release_fade(audio: np.ndarray) -> np.ndarray:
    """Keep 3 s, fade out over the last second (NSynth's note-off), pad to 4 s."""
    held = int(AUDIO.held_seconds * AUDIO.sample_rate_hz)
    out = fit_length(audio)
    fade = np.ones(AUDIO.num_samples, np.float32)
    fade[held:] = np.linspace(1.0, 0.0, AUDIO.num_samples - held, dtype=np.float32) ** 2
    return out * fade


def room_reverb(audio: np.ndarray, rng: np.random.Generator, p: "CorpusParams") -> np.ndarray:
    """Convolve with a synthetic room: exponentially decaying noise (random RT60 and wet/dry mix)."""
    from scipy.signal import fftconvolve
    rt60 = rng.uniform(*p.reverb_rt60_seconds)
    n = int(rt60 * AUDIO.sample_rate_hz)
    t = np.arange(n) / AUDIO.sample_rate_hz
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)
    ir *= rng.uniform(*p.reverb_wet) / (np.sqrt(np.sum(ir ** 2)) + 1e-9)
    ir[0] += 1.0
    return fftconvolve(audio, ir)[:len(audio)].astype(np.float32)


def _finish(audio: np.ndarray, rng: np.random.Generator, p: "CorpusParams") -> np.ndarray:
    """A random room with probability ``p.reverb_probability``, then peak-normalise to ``p.peak`` (NSynth's
    notes are normalised)."""
    if rng.uniform() < p.reverb_probability:
        audio = room_reverb(audio, rng, p)
    peak = float(np.max(np.abs(audio)))
    return (audio * (p.peak / peak)).astype(np.float32) if peak > 0 else audio.astype(np.float32)


_LOADED: dict = {}


def _load_soundfont(path: str, rate: int):
    """One synth per worker process, keeping the last SoundFont loaded (big GM banks load once)."""
    import tinysoundfont
    if path not in _LOADED:
        _LOADED.clear()
        synth = tinysoundfont.Synth(samplerate=rate, gain=-6.0)
        _LOADED[path] = (synth, synth.sfload(path))
    return _LOADED[path]


def render_soundfont(inst: Instrument, p: CorpusParams) -> list[tuple[int, int, np.ndarray]]:
    """``(pitch, velocity, audio)`` for ``p.notes_per_instrument`` random notes of a SoundFont program."""
    try:
        synth, sfid = _load_soundfont(inst.path, p.render_rate_hz)
        if inst.bank:                              # a variation: that preset or none (TinySoundFont would
            if synth.sfpreset_name(sfid, inst.bank, inst.program) is None:   # fall back to another one)
                return []
            synth.program_select(0, sfid, inst.bank, inst.program)
        else:
            try:
                synth.program_select(0, sfid, 0, inst.program)
            except Exception:
                synth.program_select(0, sfid, 0, 0)   # single-preset split stored at preset 0
    except Exception:
        return []                                  # unreadable file or missing preset: no notes
    rng = _rng(inst, p.seed)
    import soxr
    rate = p.render_rate_hz
    held = int(AUDIO.held_seconds * rate)
    total = int(AUDIO.note_seconds * rate)
    notes, tries = [], 0
    pitches = _pitch_order(inst, rng)
    while len(notes) < p.notes_per_instrument and tries < len(pitches):
        pitch, vel = int(pitches[tries]), int(rng.choice(VELOCITIES))
        tries += 1
        synth.notes_off()
        synth.sounds_off()
        synth.generate(rate // 4)                       # flush any tail
        synth.noteon(0, pitch, vel)
        on = np.frombuffer(synth.generate(held), np.float32).reshape(-1, 2)
        synth.noteoff(0, pitch)
        off = np.frombuffer(synth.generate(total - held), np.float32).reshape(-1, 2)
        audio = np.concatenate([on, off]).mean(axis=1)
        if rate != AUDIO.sample_rate_hz:
            audio = fit_length(soxr.resample(audio, rate, AUDIO.sample_rate_hz, quality="HQ"))
        if np.max(np.abs(audio)) < p.min_peak or not np.all(np.isfinite(audio)):
            continue
        notes.append((pitch, vel, _finish(audio, rng, p)))
    return notes


def _pitch_order(inst: Instrument, rng: np.random.Generator) -> np.ndarray:
    """The family's pitch range widened to SHARED_PITCH_RANGE, in random order (notes are drawn from it)."""
    lo, hi = FAMILY_PITCH_RANGE[inst.family]
    lo, hi = min(lo, SHARED_PITCH_RANGE[0]), max(hi, SHARED_PITCH_RANGE[1])
    return rng.permutation(np.arange(lo, hi + 1))


def render_synth(inst: Instrument, p: CorpusParams) -> list[tuple[int, int, np.ndarray]]:
    """``p.notes_per_instrument`` notes of one procedural instrument (one random patch per instrument)."""
    from . import synth
    rng = _rng(inst, p.seed)
    patch = synth.random_patch(inst.family, rng)
    notes = []
    for pitch in _pitch_order(inst, rng)[:p.notes_per_instrument]:
        vel = int(rng.choice(VELOCITIES))
        audio = synth.render_note(inst.family, patch, int(pitch), vel, rng)
        if np.max(np.abs(audio)) >= p.min_peak:
            notes.append((int(pitch), vel, _finish(audio, rng, p)))
    return notes


_NOTE_RE = re.compile(r"^([A-G])(s?)(-?\d)$")
_SEMITONE = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def note_to_midi(name: str) -> int | None:
    m = _NOTE_RE.match(name)
    if not m:
        return None
    return 12 * (int(m.group(3)) + 1) + _SEMITONE[m.group(1)] + (1 if m.group(2) else 0)


def recording_note(filename: str) -> tuple[int | None, int]:
    """(MIDI pitch, velocity) of a single-note recording from its file name: Philharmonia's
    ``instrument_note_length_dynamic_...`` (velocity from the dynamic) or a bare note name such as ``As2.mp3``
    (tonejs-instruments; velocity 75). Pitch None when the name holds no note."""
    parts = filename.rsplit(".", 1)[0].split("_")
    if len(parts) == 1:
        return note_to_midi(parts[0]), 75
    vel = DYNAMIC_VELOCITY.get(parts[3] if len(parts) > 3 else "", 75)
    return note_to_midi(parts[1]), vel


def render_recordings(inst: Instrument, p: CorpusParams) -> list[tuple[int, int, np.ndarray]]:
    """Up to ``recordings_per_instrument`` recordings of one folder, onset-aligned, 3 s + 1 s release fade."""
    files = sorted(glob.glob(os.path.join(inst.path, "*.mp3")) + glob.glob(os.path.join(inst.path, "*.wav")))
    rng = _rng(inst, p.seed)
    notes = []
    for f in rng.permutation(files):
        pitch, vel = recording_note(os.path.basename(f))
        if pitch is None or not 21 <= pitch <= 108:
            continue
        try:
            audio = load_audio(f, context="recording", reject_silent=True, onset_trim=True)
        except schema.DataError:
            continue
        notes.append((pitch, vel, _finish(release_fade(audio), rng, p)))
        if len(notes) >= p.recordings_per_instrument:
            break
    return notes


def _played_notes(inst: Instrument, p: CorpusParams, rng: np.random.Generator, play,
                  probe_notes: int | None = None) -> list[tuple[int, int, np.ndarray]]:
    """Notes ``play(pitch, velocity)`` renders at ``p.render_rate_hz`` (None = it did not sound), over the
    family's pitches in random order, resampled to 16 kHz, until ``p.notes_per_instrument``; none if the first
    ``probe_notes`` pitches all fail."""
    import soxr
    notes = []
    for tried, pitch in enumerate(_pitch_order(inst, rng)):
        if probe_notes is not None and tried >= probe_notes and not notes:
            break
        vel = int(rng.choice(VELOCITIES))
        audio = play(int(pitch), vel)
        if audio is None:
            continue
        audio = fit_length(soxr.resample(audio, p.render_rate_hz, AUDIO.sample_rate_hz, quality="HQ"))
        if np.max(np.abs(audio)) >= p.min_peak:
            notes.append((int(pitch), vel, _finish(audio, rng, p)))
        if len(notes) >= p.notes_per_instrument:
            break
    return notes


def render_gus(inst: Instrument, p: CorpusParams) -> list[tuple[int, int, np.ndarray]]:
    """``p.notes_per_instrument`` notes of one GUS patch program (``inst.path`` = TiMidity configuration file);
    a note TiMidity cannot play, or that is silent or clipped, is redrawn at another pitch."""
    from . import gus
    return _played_notes(inst, p, _rng(inst, p.seed),
                         lambda pitch, vel: gus.render_note(inst.program, pitch, vel, p.render_rate_hz, inst.path))


def render_instrument(args) -> list[tuple[int, int, np.ndarray]]:
    inst, p = args
    return {"recording": render_recordings, "synth": render_synth, "gus": render_gus}.get(inst.kind, render_soundfont)(inst, p)


# ----------------------------------------------------------------------------------------------- writing
def build(out_dir: str, soundfont_paths=DEFAULT_SOUNDFONTS, sample_paths=DEFAULT_SAMPLES,
          p: CorpusParams = CorpusParams(), layouts=("tfrecord", "jsonwav"), workers: int = 2,
          limit_instruments: int | None = None, progress: bool = True) -> dict:
    """Render the corpus into ``out_dir/{train,valid,test}``; returns per-split statistics."""
    from tqdm import tqdm
    instruments = discover(soundfont_paths, sample_paths, p.synth_instruments, p.bank_variations,
                           p.freepats)
    if not instruments:
        raise schema.DataError("No SoundFonts or recordings found. Install the Debian SoundFont packages "
                             "(make setup) or pass --soundfonts/--samples paths.")
    if limit_instruments:
        rng = np.random.default_rng(p.seed)
        instruments = [instruments[i] for i in sorted(rng.choice(len(instruments), limit_instruments,
                                                                 replace=False))]
    os.makedirs(out_dir, exist_ok=True)
    by_split: dict[str, list] = {"train": [], "valid": [], "test": []}
    counters: Counter = Counter()
    rows = []
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = pool.map(render_instrument, [(i, p) for i in instruments], chunksize=8)
        for inst, notes in tqdm(zip(instruments, results), total=len(instruments), desc="render",
                                disable=not progress):
            if not notes:
                continue
            idx = counters[(inst.family, inst.source)]
            counters[(inst.family, inst.source)] += 1
            inst_id = len(rows)
            inst_str = f"{inst.family}_{inst.source}_{idx:03d}"
            split = split_of(inst, p)
            rows.append({"instrument_str": inst_str, "instrument": inst_id, "split": split,
                         "sample_set": inst.sample_set, "bank": inst.bank, "program": inst.program,
                         "family": inst.family,
                         "path": os.path.relpath(inst.path, SHARED) if inst.path.startswith(
                             os.path.realpath(SHARED)) else inst.path, "notes": len(notes)})
            seen = set()
            for pitch, vel, audio in notes:
                if (pitch, vel) in seen:
                    continue
                seen.add((pitch, vel))
                meta = writers.note_metadata(family=inst.family, source=inst.source, instrument=inst_id,
                                          pitch=pitch, velocity=vel, instrument_str=inst_str)
                by_split[split].append((meta, audio))
    stats = {}
    for split, notes in by_split.items():
        if not notes:
            continue
        rng = np.random.default_rng([p.seed, SPLITS.index(split)])
        order = rng.permutation(len(notes))
        notes = [notes[i] for i in order]
        for i, (meta, _) in enumerate(notes):
            meta["note"] = i
        stats[split] = _write_split(os.path.join(out_dir, split), split, notes, p, layouts)
    with open(os.path.join(out_dir, "instruments.csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(os.path.join(out_dir, "stats.json"), "w") as fh:
        json.dump({"params": dataclasses.asdict(p), "splits": stats}, fh, indent=1)
    return stats


def _write_split(folder, split, notes, p: CorpusParams, layouts) -> dict:
    os.makedirs(folder, exist_ok=True)
    n_shards = p.shards if split == "train" else 1
    if "tfrecord" in layouts:
        for s in range(n_shards):
            name = (f"nsynth-{split}-{s:05d}-of-{n_shards:05d}.tfrecord" if n_shards > 1
                    else f"nsynth-{split}.tfrecord")
            writers.write_tfrecord(os.path.join(folder, name), notes[s::n_shards])
    if "jsonwav" in layouts:
        writers.write_jsonwav(os.path.join(folder, "jsonwav"), notes)
    labels = [nsynth_family_to_label(m["instrument_family"]) for m, _ in notes]
    counts = np.bincount(labels, minlength=len(FAMILIES)).tolist()
    st = {"notes": len(notes), "instruments": len({m["instrument"] for m, _ in notes}), "label_counts": counts}
    with open(os.path.join(folder, "stats.json"), "w") as fh:
        json.dump(st, fh, indent=1)
    return st


def add_parser(sub):
    ap = sub.add_parser("corpus", help="render an NSynth-format corpus from SoundFonts and recordings",
                        description="Render an NSynth-format corpus (16 kHz mono 4 s notes, held 3 s, NSynth's "
                                    "schema) from General-MIDI SoundFonts, single-note recordings and procedural "
                                    "synths; train, valid and test are split by instrument and share none.")
    ap.add_argument("--out", required=True, help="output folder (train/ valid/ test/ are created)")
    ap.add_argument("--soundfonts", nargs="*", default=list(DEFAULT_SOUNDFONTS),
                    help="SoundFont files or folders (default: Debian's packages + ../shared/soundfonts)")
    ap.add_argument("--samples", nargs="*", default=list(DEFAULT_SAMPLES),
                    help="folders of instrument sub-folders of single-note recordings")
    ap.add_argument("--notes-per-instrument", type=int, default=CorpusParams.notes_per_instrument,
                    help="notes (pitch, velocity) rendered per instrument (default: %(default)s)")
    ap.add_argument("--synth-instruments", type=int, default=CorpusParams.synth_instruments,
                    help="procedural organs, synth basses and FM electric pianos to add (0 = none)")
    ap.add_argument("--bank-variations", choices=("on", "off"),
                    default="on" if CorpusParams.bank_variations else "off",
                    help="also render the variation presets (banks 1-127) of complete banks: 'on' = corpus v5, "
                         "'off' = v4 (default: %(default)s, the corpus of the shipped weights)")
    ap.add_argument("--freepats", choices=("on", "off"), default="on" if CorpusParams.freepats else "off",
                    help="also render the programs of Debian's freepats GUS patch set with TiMidity++ (packages "
                         "freepats and timidity; default: %(default)s, as in v5)")
    ap.add_argument("--seed", type=int, default=0,
                    help="seed of the train/valid split of instruments and of the notes played (default: 0)")
    ap.add_argument("--layouts", default="tfrecord,jsonwav", help="comma list: tfrecord,jsonwav")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="rendering processes (default: the CPU count, %(default)s here)")
    ap.add_argument("--limit-instruments", type=int, default=None, help="render a random subset (quick runs)")
    ap.set_defaults(func=_main)


def _main(args):
    p = CorpusParams(notes_per_instrument=args.notes_per_instrument, seed=args.seed,
                     synth_instruments=args.synth_instruments, bank_variations=args.bank_variations == "on",
                     freepats=args.freepats == "on")
    stats = build(args.out, args.soundfonts, args.samples, p, tuple(args.layouts.split(",")), args.workers,
                  args.limit_instruments)
    for split, st in stats.items():
        print(f"{split}: {st['notes']} notes from {st['instruments']} instruments; per family "
              + ", ".join(f"{f}={c}" for f, c in zip(FAMILIES, st["label_counts"])))
    return 0


# ----------------------------------------------------------------------------------------------- embedded sample
SAMPLE_SETS = ("FluidR3_GM", "FluidR3Mono_GM", "MuseScore_General")   # MIT-licensed, all in the test split


def embedded_sample(corpus_dir: str, out_dir: str, per_family: int = 10, seed: int = 0) -> dict:
    """Copy ``per_family`` test-split notes per family (distinct instruments first) from MIT-licensed
    SoundFonts into ``out_dir`` (JSON+wav layout): the sample committed in data/."""
    import pandas as pd
    inst = pd.read_csv(os.path.join(corpus_dir, "instruments.csv"))
    allowed = set(inst[(inst.split == "test") & inst.sample_set.isin(SAMPLE_SETS)].instrument_str)
    src = os.path.join(corpus_dir, "test", "jsonwav")
    meta = data.read_examples_json(src)
    rng = np.random.default_rng(seed)
    chosen = []
    for fam in FAMILIES:
        notes = [m for m in meta.values() if m["instrument_family_str"] == fam and m["instrument_str"] in allowed]
        notes = [notes[i] for i in rng.permutation(len(notes))]
        picked, used = [], set()
        for pass_ in range(2):                         # first one note per instrument, then fill up
            for m in notes:
                if len(picked) < per_family and m not in picked and (pass_ or m["instrument_str"] not in used):
                    picked.append(m)
                    used.add(m["instrument_str"])
        chosen += picked
    pairs = [(m, load_audio(os.path.join(src, "audio", f"{m['note_str']}.wav"))) for m in chosen]
    writers.write_jsonwav(out_dir, pairs)
    return Counter(m["instrument_family_str"] for m in chosen)
