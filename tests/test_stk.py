"""STK instruments as a corpus source: the score, the class table, and (with stk + faketime installed) real renders."""
from __future__ import annotations

import numpy as np
import pytest

from nsynth_cnn import corpus, stk
from nsynth_cnn.params import AUDIO, FAMILIES, NSYNTH_SOURCE_NAMES

needs_stk = pytest.mark.skipif(not stk.available(),
                               reason="needs the Debian packages stk and faketime (make soundfonts)")
RATE = 48_000


def test_score_holds_the_note_three_seconds_then_releases_it():
    lines = stk.score(60, 100, {2: 64.0, 128: 90.5}).splitlines()
    assert lines[0] == "NoteOn 0.0 1 60 100"
    assert lines[1:3] == ["ControlChange 0.0 1 2 64.00", "ControlChange 0.0 1 128 90.50"]
    assert lines[3] == "NoteOff 3.0 1 60 100"          # delta times: off after the held 3 s ...
    assert lines[4] == "NoteOff 1.0 1 60 0"            # ... and 1 s more of release before the score ends


def test_voice_table_maps_to_nsynth_families_with_midi_control_ranges():
    assert set(v[0] for v in stk.VOICES.values()) <= set(FAMILIES)
    assert all(v[1] in NSYNTH_SOURCE_NAMES for v in stk.VOICES.values())
    for family, _, controls, _ in stk.VOICES.values():
        assert all(0 <= lo < hi <= 128 for lo, hi in controls.values()), family
    rng = np.random.default_rng(0)
    bars = {stk.random_controls("ModalBar", rng)[16] for _ in range(200)}
    assert bars == set(range(9))                         # the preset selector takes whole values only
    assert [stk.voice_of(i) for i in range(len(stk.VOICES))] == sorted(stk.VOICES)


def test_stk_instruments_come_last_or_are_left_out_with_a_warning(monkeypatch):
    monkeypatch.setattr(stk, "available", lambda: True)
    plain = corpus.discover([], [], synth_instruments=4)
    played = corpus.discover([], [], synth_instruments=4, stk_instruments=20)
    assert played[:len(plain)] == plain
    extra = played[len(plain):]
    assert len(extra) == 20 and {i.kind for i in extra} == {"stk"} and extra[3].key == "stk/3"
    assert {i.path for i in extra} <= set(stk.VOICES)
    monkeypatch.setattr(stk, "available", lambda: False)
    with pytest.warns(UserWarning, match="stk-demo or faketime not found"):
        assert corpus.discover([], [], synth_instruments=4, stk_instruments=20) == plain


@needs_stk
def test_render_note_is_a_sustained_four_second_note_that_repeats_with_its_noise_seed():
    controls = {2: 64.0, 4: 30.0, 128: 90.0}
    a = stk.render_note("Clarinet", controls, 60, 100, RATE, noise_seed=1)
    assert a is not None and a.shape == (int(AUDIO.note_seconds * RATE),) and a.dtype == np.float32
    held, release = a[RATE:int(2.5 * RATE)], a[int(3.5 * RATE):]
    assert np.sqrt(np.mean(held ** 2)) > 0.05 * np.abs(a).max()
    assert np.sqrt(np.mean(release ** 2)) < 0.01 * np.sqrt(np.mean(held ** 2))   # it stops after note-off
    np.testing.assert_array_equal(a, stk.render_note("Clarinet", controls, 60, 100, RATE, noise_seed=1))
    assert not np.array_equal(a, stk.render_note("Clarinet", controls, 60, 100, RATE, noise_seed=2))


@needs_stk
def test_render_stk_gives_the_instruments_notes_at_16_khz():
    p = corpus.CorpusParams(notes_per_instrument=3)
    inst = corpus.Instrument("stk", "Saxofony", 5, "reed", "synthetic", "stk")
    notes = corpus.render_stk(inst, p)
    assert len(notes) == 3 and len({n[0] for n in notes}) == 3
    for pitch, velocity, audio in notes:
        assert audio.shape == (AUDIO.num_samples,) and np.isclose(np.abs(audio).max(), p.peak, atol=1e-3)
        assert velocity in corpus.VELOCITIES and 21 <= pitch <= 108
    again = corpus.render_stk(inst, p)
    assert all(np.array_equal(x[2], y[2]) for x, y in zip(notes, again))
