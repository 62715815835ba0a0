"""GUS patch sets (freepats) as a corpus source: the configuration parser, the one-note MIDI file, and (with
timidity + freepats installed) real renders."""
import numpy as np
import pytest

from nsynth_cnn.tools import corpus
from nsynth_cnn.tools.corpus import gus
from nsynth_cnn.params import AUDIO

pytestmark = pytest.mark.slow      # renders through TiMidity++ (a subprocess)

needs_gus = pytest.mark.skipif(not gus.available(),
                               reason="needs the Debian packages timidity and freepats (make soundfonts)")
RATE = 48_000


def test_programs_reads_only_the_melodic_bank_0(tmp_path):
    cfg = tmp_path / "set.cfg"
    cfg.write_text("dir /somewhere\n\ndrumset 0\n\n 35\tDrum_000/035_Kick.pat amp=100\n\nbank 0\n\n"
                   " 0\tTone_000/000_Piano.pat\n 71\tTone_000/071_Clarinet.pat # a comment\n"
                   "#  72\tTone_000/072_Piccolo.pat\n\nbank 8\n\n 4\tTone_008/004_Other.pat\n")
    assert gus.programs(str(cfg)) == {0: "Tone_000/000_Piano.pat", 71: "Tone_000/071_Clarinet.pat"}


def test_note_midi_holds_the_note_three_seconds_then_leaves_one_for_the_release(tmp_path):
    import mido
    path = tmp_path / "note.mid"
    gus.note_midi(str(path), program=71, pitch=62, velocity=100)
    song = mido.MidiFile(str(path))
    assert song.length == pytest.approx(AUDIO.note_seconds)
    events, t = [], 0.0
    for msg in song:                       # iterating a MidiFile yields delta times in seconds
        t += msg.time
        if not msg.is_meta:
            events.append((msg.type, round(t, 6), getattr(msg, "program", getattr(msg, "note", None))))
    assert events == [("program_change", 0.0, 71), ("note_on", 0.0, 62), ("note_off", AUDIO.held_seconds, 62)]


def test_freepats_instruments_come_after_the_others_or_are_left_out_with_a_warning(monkeypatch):
    plain = corpus.discover([], [], synth_instruments=3)
    monkeypatch.setattr(gus, "available", lambda cfg=gus.FREEPATS_CFG: True)
    monkeypatch.setattr(gus, "programs", lambda cfg=gus.FREEPATS_CFG: {71: "a.pat", 0: "b.pat", 120: "c.pat"})
    found = corpus.discover([], [], synth_instruments=3, freepats=True)
    extra = found[len(plain):]
    assert found[:len(plain)] == plain      # an addition after the others: earlier names keep their order
    assert [(i.key, i.family, i.kind) for i in extra] == [("freepats/0", "keyboard", "gus"),
                                                          ("freepats/71", "reed", "gus")]   # 120 has no family
    monkeypatch.setattr(gus, "available", lambda cfg=gus.FREEPATS_CFG: False)
    with pytest.warns(UserWarning, match="timidity or .* not found"):
        assert corpus.discover([], [], synth_instruments=3, freepats=True) == plain


@needs_gus
def test_render_note_sustains_for_the_held_part_then_releases():
    audio = gus.render_note(71, 60, 100, RATE)          # freepats' clarinet
    assert audio.shape == (int(AUDIO.note_seconds * RATE),) and audio.dtype == np.float32

    def rms(t0, t1):
        return float(np.sqrt(np.mean(audio[int(t0 * RATE):int(t1 * RATE)] ** 2)))
    assert rms(2.0, 2.9) > 0.3 * rms(0.2, 1.0)           # still sounding near note-off
    assert rms(3.6, 4.0) < 0.05 * rms(2.0, 2.9)          # and gone after it


@needs_gus
def test_render_gus_gives_the_instruments_notes_at_16_khz():
    p = corpus.CorpusParams(notes_per_instrument=3)
    inst = corpus.Instrument("freepats", gus.FREEPATS_CFG, 33, "bass", "electronic", "gus")
    notes = corpus.render_gus(inst, p)
    assert len(notes) == 3 and len({pitch for pitch, _, _ in notes}) == 3
    for pitch, vel, audio in notes:
        assert 21 <= pitch <= 108 and vel in corpus.VELOCITIES
        assert audio.shape == (AUDIO.num_samples,) and np.max(np.abs(audio)) == pytest.approx(p.peak, abs=1e-3)
    again = corpus.render_gus(inst, p)
    assert all(np.array_equal(a, b) for (_, _, a), (_, _, b) in zip(notes, again))
