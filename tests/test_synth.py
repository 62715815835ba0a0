"""Procedural electronic/synthetic instruments (synth.py) and their place in the corpus."""
from __future__ import annotations

import numpy as np
import pytest

from nsynth_cnn.tools import corpus
from nsynth_cnn.tools.corpus import synth
from nsynth_cnn.params import AUDIO

SR = AUDIO.sample_rate_hz
HELD = int(AUDIO.held_seconds * SR)


def rms(x):
    return float(np.sqrt(np.mean(np.square(x)) + 1e-20))


def note(family, seed=0, pitch=60, velocity=100):
    rng = np.random.default_rng(seed)
    return synth.render_note(family, synth.random_patch(family, rng), pitch, velocity, rng)


@pytest.mark.parametrize("family", list(synth.SYNTH_FAMILIES))
@pytest.mark.parametrize("pitch", [24, 60, 100])
def test_notes_follow_the_nsynth_protocol(family, pitch):
    for seed in range(3):
        x = note(family, seed, pitch)
        assert x.shape == (AUDIO.num_samples,) and x.dtype == np.float32 and np.all(np.isfinite(x))
        assert np.isclose(np.max(np.abs(x)), 1.0, atol=1e-6)
        held = rms(x[SR // 2:HELD])          # sounding while the key is down ...
        tail = rms(x[HELD + SR // 2:])       # ... and (nearly) gone 0.5 s after note-off
        assert held > 0.01 and tail < 0.5 * held, (family, seed, pitch, held, tail)


@pytest.mark.parametrize("family", list(synth.SYNTH_FAMILIES))
def test_fundamental_is_at_the_requested_pitch(family):
    """The strongest low partial sits at a harmonic of the pitch's f0 (organs may add the 16' sub-octave)."""
    for seed in range(4):
        x = note(family, seed, pitch=57)            # A3 = 220 Hz
        spec = np.abs(np.fft.rfft(x[:HELD] * np.hanning(HELD)))
        freqs = np.fft.rfftfreq(HELD, 1 / SR)
        peak = freqs[np.argmax(spec)]
        assert min(abs(peak / 110.0 - round(peak / 110.0)), 1.0) < 0.02, (family, seed, peak)


def test_envelopes_tell_the_families_apart():
    """Organs sustain flat, electric pianos decay while held: the cue the synthesis methods encode."""
    for seed in range(5):
        organ, piano = note("organ", seed), note("keyboard", seed)
        assert 0.6 < rms(organ[int(2.5 * SR):HELD]) / rms(organ[SR // 2:SR]) < 1.6
        assert rms(piano[int(2.5 * SR):HELD]) / rms(piano[SR // 20:SR // 2]) < 0.7


def test_patches_are_deterministic_and_varied():
    a = synth.random_patch("bass", np.random.default_rng(1))
    assert a == synth.random_patch("bass", np.random.default_rng(1))
    assert a != synth.random_patch("bass", np.random.default_rng(2))
    np.testing.assert_array_equal(note("organ", 3), note("organ", 3))
    with pytest.raises(ValueError, match="no procedural synthesis"):
        synth.random_patch("vocal", np.random.default_rng(0))


def test_corpus_adds_procedural_instruments():
    found = corpus.discover([], [], synth_instruments=200)
    assert len(found) == 200 and {i.sample_set for i in found} == {"procedural"}
    counts = {f: sum(i.family == f for i in found) for f in synth.SYNTH_FAMILIES}
    assert counts == {f: 2 * share for f, (_, share) in synth.SYNTH_FAMILIES.items()}
    assert {i.source for i in found} <= {"electronic", "synthetic"}
    p = corpus.CorpusParams(notes_per_instrument=3, reverb_probability=0.0)
    assert {corpus.split_of(i, p) for i in found} == {"train", "valid"}   # never the held-out test sets
    notes = corpus.render_instrument((found[0], p))
    assert len(notes) == 3 and len({pitch for pitch, _, _ in notes}) == 3
    for pitch, vel, audio in notes:
        assert vel in corpus.VELOCITIES and np.isclose(np.max(np.abs(audio)), p.peak, atol=1e-6)
    again = corpus.render_instrument((found[0], p))
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(notes, again))
