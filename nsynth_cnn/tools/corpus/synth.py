"""Procedural electronic and synthetic instruments for the corpus (NSynth's non-acoustic sources).

About half of NSynth's notes come from electronic or synthetic instruments (drawbar organs, synth basses,
FM electric pianos, ...), which General-MIDI SoundFonts barely cover: a GM bank has one or two synth basses
and its organs are sampled. Each *patch* here is one random instrument of a family whose sound is defined by
its synthesis method, so the family label is not a matter of taste:

=========  ==========  =========================================================================================
family     source      synthesis
=========  ==========  =========================================================================================
organ      electronic  tonewheel drawbar organ: 9 sine footages at random drawbar levels, optional percussion
                       (decaying 2nd/3rd harmonic), key click, vibrato/Leslie tremolo; flat sustain, fast release
organ      electronic  combo organ: square/pulse tone through a fixed low-pass, flat sustain
bass       synthetic   subtractive synth bass: saw/square/pulse/triangle (+ sub-octave) through a resonant
                       low-pass whose cutoff falls from an envelope peak; amplitude attack-decay-sustain
keyboard   electronic  FM electric piano: 1:1 (or 1:2) carrier/modulator with decaying index + high "tine"
                       modulator transient; decaying amplitude
=========  ==========  =========================================================================================

All oscillators are additive sums of harmonics below 7.8 kHz, so nothing aliases at 16 kHz; FM is rendered
at 48 kHz and resampled. Notes follow NSynth's protocol (held 3 s, then released) and are deterministic
given the patch and the random generator passed in.
"""
from __future__ import annotations

import numpy as np

from ...params import AUDIO

SR = AUDIO.sample_rate_hz
MAX_PARTIAL_HZ = 7_800.0
DRAWBAR_RATIOS = np.array([0.5, 1.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0])   # 16', 5 1/3', 8', 4', ... 1'

# family -> (NSynth source, how many patches per 100 procedural instruments)
SYNTH_FAMILIES = {"organ": ("electronic", 40), "bass": ("synthetic", 35), "keyboard": ("electronic", 25)}


def family_of(index: int) -> str:
    """Procedural instrument ``index`` -> its family (fixed cycle of 100 in SYNTH_FAMILIES proportions)."""
    slot, acc = index % 100, 0
    for fam, (_, share) in SYNTH_FAMILIES.items():
        acc += share
        if slot < acc:
            return fam
    return next(iter(SYNTH_FAMILIES))


def _time(n: int, rate: int = SR) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / rate


def _release_envelope(n: int, held: int, tau: float, rate: int = SR) -> np.ndarray:
    t = np.maximum(_time(n, rate) - held / rate, 0.0)
    return np.exp(-t / tau)


def _phase(f0: float, n: int, vibrato_hz: float = 0.0, vibrato_depth: float = 0.0, rate: int = SR):
    """Instantaneous phase (radians) of a tone at f0 with optional sinusoidal vibrato (depth as ratio)."""
    f = f0 * (1.0 + vibrato_depth * np.sin(2 * np.pi * vibrato_hz * _time(n, rate)))
    return 2 * np.pi * np.cumsum(f) / rate


def _additive(phase: np.ndarray, f0: float, amps) -> np.ndarray:
    """sum_k amps[k](t) * sin(k * phase), harmonics 1..K (amps: (K,) or (K, n)); partials above
    MAX_PARTIAL_HZ dropped."""
    amps = np.asarray(amps, np.float64)
    k_max = min(len(amps), int(MAX_PARTIAL_HZ // max(f0, 1.0)))
    out = np.zeros_like(phase)
    for k in range(1, k_max + 1):
        out += amps[k - 1] * np.sin(k * phase)
    return out


def random_patch(family: str, rng: np.random.Generator) -> dict:
    """Parameters of one random instrument of ``family``."""
    if family == "organ":
        kind = "drawbar" if rng.uniform() < 0.75 else "combo"
        drawbars = rng.integers(0, 9, 9)
        drawbars[2] = max(drawbars[2], rng.integers(4, 9))       # the 8' fundamental is nearly always out
        return {"kind": kind, "drawbars": drawbars.tolist(), "percussion": int(rng.choice([0, 0, 2, 3])),
                "perc_tau": rng.uniform(0.15, 0.8), "click": rng.uniform() < 0.5,
                "tremolo_hz": rng.choice([0.0, rng.uniform(0.7, 1.0), rng.uniform(5.5, 7.0)]),
                "tremolo_depth": rng.uniform(0.05, 0.3), "vibrato_depth": rng.choice([0.0, rng.uniform(1e-3, 4e-3)]),
                "pulse_width": rng.uniform(0.15, 0.5), "combo_cutoff": rng.uniform(3.0, 12.0),
                "release_tau": rng.uniform(0.005, 0.06)}
    if family == "bass":
        return {"wave": rng.choice(["saw", "square", "pulse", "triangle"]), "pulse_width": rng.uniform(0.1, 0.5),
                "sub": rng.uniform(0.0, 0.8) if rng.uniform() < 0.4 else 0.0,
                "cutoff_ratio": float(np.exp(rng.uniform(np.log(1.0), np.log(10.0)))),
                "env_amount": float(np.exp(rng.uniform(np.log(0.5), np.log(30.0)))),
                "filter_tau": float(np.exp(rng.uniform(np.log(0.03), np.log(0.8)))),
                "resonance": rng.uniform(0.7, 6.0), "attack": rng.uniform(0.001, 0.02),
                "decay_tau": float(np.exp(rng.uniform(np.log(0.1), np.log(3.0)))), "sustain": rng.uniform(0.0, 1.0),
                "release_tau": rng.uniform(0.02, 0.3), "detune": rng.choice([0.0, rng.uniform(0.001, 0.008)])}
    if family == "keyboard":
        return {"mod_ratio": float(rng.choice([1.0, 1.0, 2.0, 0.5, 3.0])), "index": rng.uniform(0.5, 3.5),
                "index_tau": float(np.exp(rng.uniform(np.log(0.2), np.log(2.0)))),
                "tine_ratio": rng.uniform(8.0, 17.0), "tine_index": rng.uniform(0.0, 2.5),
                "tine_tau": rng.uniform(0.005, 0.05), "amp_tau": float(np.exp(rng.uniform(np.log(0.6), np.log(4.0)))),
                "tremolo_hz": rng.choice([0.0, rng.uniform(3.0, 6.0)]), "tremolo_depth": rng.uniform(0.05, 0.4),
                "release_tau": rng.uniform(0.03, 0.3)}
    raise ValueError(f"no procedural synthesis for family {family!r}; choose one of {', '.join(SYNTH_FAMILIES)}")


def _organ(patch, f0, vel, rng, n, held):
    t = _time(n)
    phase = _phase(f0, n, 6.5, patch["vibrato_depth"])
    if patch["kind"] == "drawbar":
        levels = np.array([0.0 if d == 0 else 10 ** ((d - 8) * 3 / 20) for d in patch["drawbars"]])
        x = sum(lv * np.sin(r * phase) for lv, r in zip(levels, DRAWBAR_RATIOS)
                if lv > 0 and r * f0 < MAX_PARTIAL_HZ)
        if patch["percussion"] and patch["percussion"] * f0 < MAX_PARTIAL_HZ:
            x = x + np.exp(-t / patch["perc_tau"]) * np.sin(patch["percussion"] * phase)
    else:
        k = np.arange(1, 200)
        amps = np.sin(np.pi * k * patch["pulse_width"]) / k / np.sqrt(1 + (k * f0 / (patch["combo_cutoff"] * f0
                                                                                          + 500)) ** 4)
        x = _additive(phase, f0, amps)
    if patch["click"]:
        m = int(0.004 * SR)
        x = np.asarray(x, np.float64)
        x[:m] += 0.3 * rng.standard_normal(m) * np.hanning(2 * m)[m:]
    trem = 1.0 - patch["tremolo_depth"] * 0.5 * (1 + np.sin(2 * np.pi * patch["tremolo_hz"] * t)) \
        if patch["tremolo_hz"] else 1.0
    attack = np.minimum(t / 0.003, 1.0)
    return x * trem * attack * _release_envelope(n, held, patch["release_tau"])


def _bass(patch, f0, vel, rng, n, held):
    t = _time(n)
    k = np.arange(1, 400, dtype=np.float64)
    wave = patch["wave"]
    if wave == "saw":
        amps = 1.0 / k
    elif wave == "square":
        amps = np.where(k % 2 == 1, 1.0 / k, 0.0)
    elif wave == "pulse":
        amps = np.abs(np.sin(np.pi * k * patch["pulse_width"])) / k
    else:
        amps = np.where(k % 2 == 1, 1.0 / k ** 2, 0.0)
    k_max = min(len(k), int(MAX_PARTIAL_HZ // f0))
    k, amps = k[:k_max], amps[:k_max]
    # cutoff falls from (1 + env_amount) x base to base; brighter at high velocity
    ctl = np.arange(0, n, 64)
    fc = f0 * patch["cutoff_ratio"] * (1 + patch["env_amount"] * (vel / 127) * np.exp(-t[ctl] / patch["filter_tau"]))
    ratio = (k[:, None] * f0) / fc[None, :]
    gain = 1.0 / np.sqrt((1 - ratio ** 2) ** 2 + (ratio / patch["resonance"]) ** 2)
    amp_env = np.minimum(t / patch["attack"], 1.0) * (patch["sustain"] + (1 - patch["sustain"])
                                                      * np.exp(-np.maximum(t - patch["attack"], 0) / patch["decay_tau"]))
    x = np.zeros(n)
    phases = [_phase(f0, n)] + ([_phase(f0 * (1 + patch["detune"]), n)] if patch["detune"] else [])
    for ph in phases:
        for i in range(k_max):
            x += amps[i] * np.interp(np.arange(n), ctl, gain[i]) * np.sin(k[i] * ph + i)
    if patch["sub"]:
        x += patch["sub"] * np.sin(_phase(f0 / 2, n))
    return x * amp_env * _release_envelope(n, held, patch["release_tau"])


def _epiano(patch, f0, vel, rng, n, held):
    rate = 3 * SR                                         # FM sidebands: render at 48 kHz, then resample
    n3, held3 = 3 * n, 3 * held
    t = _time(n3, rate)
    phase = _phase(f0, n3, rate=rate)
    v = vel / 127
    index = patch["index"] * v * np.exp(-t / patch["index_tau"])
    tine = patch["tine_index"] * v * np.exp(-t / patch["tine_tau"])
    x = np.sin(phase + index * np.sin(patch["mod_ratio"] * phase) + tine * np.sin(patch["tine_ratio"] * phase))
    env = np.minimum(t / 0.002, 1.0) * np.exp(-t / patch["amp_tau"]) * _release_envelope(n3, held3,
                                                                                       patch["release_tau"], rate)
    if patch["tremolo_hz"]:
        env = env * (1 - patch["tremolo_depth"] * 0.5 * (1 + np.sin(2 * np.pi * patch["tremolo_hz"] * t)))
    import soxr
    return soxr.resample(x * env, rate, SR, quality="HQ")[:n]


_RENDER = {"organ": _organ, "bass": _bass, "keyboard": _epiano}


def render_note(family: str, patch: dict, pitch: int, velocity: int, rng: np.random.Generator) -> np.ndarray:
    """One 4 s note (held 3 s, then released) at 16 kHz, float32 peak 1 (silent notes stay zero)."""
    n, held = AUDIO.num_samples, int(AUDIO.held_seconds * SR)
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    x = np.asarray(_RENDER[family](patch, f0, velocity, rng, n, held), np.float64)[:n]
    peak = np.max(np.abs(x))
    return (x / peak if peak > 0 else x).astype(np.float32)
