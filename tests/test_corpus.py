"""Corpus renderer: a tiny SoundFont corpus through the CLI, read back with the NSynth readers."""
from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import os
import re

import numpy as np
import pytest

from conftest import N, run_cli
from nsynth_cnn import batches, data, schema
from nsynth_cnn.tools import corpus
from nsynth_cnn.params import FAMILIES, NSYNTH_FAMILY_NAMES, NSYNTH_SOURCE_NAMES

pytestmark = pytest.mark.slow      # renders the corpus in a subprocess

SF2 = "/usr/share/sounds/sf2/TimGM6mb.sf2"
NAME_RE = re.compile(r"^(?P<family>[a-z_]+?)_(?P<source>acoustic|electronic|synthetic)_(?P<idx>\d{3})"
                     r"-(?P<pitch>\d{3})-(?P<velocity>\d{3})$")

needs_renderer = pytest.mark.skipif(
    importlib.util.find_spec("tinysoundfont") is None or not os.path.isfile(SF2),
    reason=f"needs tinysoundfont (pip install --no-deps tinysoundfont==0.3.7) and {SF2} "
           "(apt-get install timgm6mb-soundfont)")


def render(out, seed=0, layouts="tfrecord,jsonwav"):
    proc = run_cli("corpus", "--out", out, "--soundfonts", SF2, "--samples", "--limit-instruments", 12,
                   "--notes-per-instrument", 2, "--workers", 1, "--seed", seed, "--layouts", layouts,
                   timeout=1800, module="nsynth_cnn.tools")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def read_split(folder):
    audio, meta = data.load_arrays(folder)
    return {s: (audio[i], {k: v[i] for k, v in meta.items()}) for i, s in enumerate(meta["note_str"])}


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus") / "c"
    proc = render(out)
    splits = {s: read_split(out / s) for s in corpus.SPLITS if (out / s).is_dir()}
    return out, proc, splits


@needs_renderer
def test_corpus_notes_follow_nsynth_format(tiny_corpus):
    out, proc, splits = tiny_corpus
    assert "train" in splits, proc.stdout
    total = sum(len(v) for v in splits.values())
    assert 12 <= total <= 24                     # <= 2 notes for each of 12 instruments; most render
    for split, notes in splits.items():
        for note_str, (audio, m) in notes.items():
            match = NAME_RE.match(note_str)
            assert match, note_str
            assert match["family"] == m["instrument_family_str"] and match["family"] in FAMILIES
            assert match["source"] == m["instrument_source_str"]
            assert NSYNTH_FAMILY_NAMES[m["instrument_family"]] == m["instrument_family_str"]
            assert NSYNTH_SOURCE_NAMES[m["instrument_source"]] == m["instrument_source_str"]
            assert int(match["pitch"]) == m["pitch"] and int(match["velocity"]) == m["velocity"]
            assert m["velocity"] in corpus.VELOCITIES
            lo, hi = corpus.FAMILY_PITCH_RANGE[m["instrument_family_str"]]
            lo, hi = min(lo, corpus.SHARED_PITCH_RANGE[0]), max(hi, corpus.SHARED_PITCH_RANGE[1])
            assert lo <= m["pitch"] <= hi
            assert note_str.startswith(m["instrument_str"] + "-")
            assert m["sample_rate"] == 16000 and m["label"] == FAMILIES.index(m["instrument_family_str"])
            assert audio.shape == (N,) and np.all(np.isfinite(audio))
            peak = np.max(np.abs(audio))
            assert peak == pytest.approx(corpus.CorpusParams().peak, abs=1e-4), f"{note_str}: peak {peak}"
            assert np.abs(audio[:16000]).max() > 1e-3            # the note sounds in its first second


@needs_renderer
def test_corpus_splits_share_no_instrument(tiny_corpus):
    out, _, splits = tiny_corpus
    insts = {s: {m["instrument_str"] for _, m in notes.values()} for s, notes in splits.items()}
    ids = {s: {int(m["instrument"]) for _, m in notes.values()} for s, notes in splits.items()}
    names = list(insts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not insts[a] & insts[b], (a, b)
            assert not ids[a] & ids[b], (a, b)
    with open(out / "instruments.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) <= 12
    for split, found in insts.items():
        assert found == {r["instrument_str"] for r in rows if r["split"] == split}
    with open(out / "stats.json") as fh:
        stats = json.load(fh)["splits"]
    for split, notes in splits.items():
        counts = np.bincount([m["label"] for _, m in notes.values()], minlength=10).tolist()
        assert stats[split]["label_counts"] == counts and stats[split]["notes"] == len(notes)
        # label_counts() must take the same numbers from the split's stats.json
        assert batches.label_counts(out / split).tolist() == counts


@needs_renderer
def test_corpus_jsonwav_layout_matches_tfrecords(tiny_corpus):
    out, _, splits = tiny_corpus
    js = read_split(out / "train" / "jsonwav")
    assert set(js) == set(splits["train"])
    for s, (audio, m) in js.items():
        assert np.max(np.abs(audio - splits["train"][s][0])) <= 1 / 32768
        assert m["instrument_str"] == splits["train"][s][1]["instrument_str"]


@needs_renderer
def test_corpus_is_deterministic(tiny_corpus, tmp_path):
    _, _, first = tiny_corpus
    render(tmp_path / "again", layouts="tfrecord")
    again = {s: read_split(tmp_path / "again" / s) for s in first}
    for split in first:
        assert set(again[split]) == set(first[split])
        for s, (audio, _) in first[split].items():
            np.testing.assert_array_equal(again[split][s][0], audio, err_msg=s)


@needs_renderer
def test_seed_picks_the_notes():
    """Same seed: identical renders; another seed: other pitches/velocities (so the test above can fail)."""
    inst = corpus.Instrument("TimGM6mb", SF2, 0, "keyboard", "acoustic", "soundfont")
    a = corpus.render_soundfont(inst, corpus.CorpusParams(notes_per_instrument=2, seed=0))
    b = corpus.render_soundfont(inst, corpus.CorpusParams(notes_per_instrument=2, seed=0))
    c = corpus.render_soundfont(inst, corpus.CorpusParams(notes_per_instrument=2, seed=1))
    assert len(a) == len(b) == len(c) == 2
    assert [(p, v) for p, v, _ in a] == [(p, v) for p, v, _ in b]
    for (_, _, x), (_, _, y) in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert [(p, v) for p, v, _ in a] != [(p, v) for p, v, _ in c]


def test_gm_program_table():
    assert not set(range(80, 88)) & set(corpus.GM_FAMILY)        # GM synth leads = NSynth's dropped family
    assert all(fam in FAMILIES for fam, _ in corpus.GM_FAMILY.values())
    assert all(src in NSYNTH_SOURCE_NAMES for _, src in corpus.GM_FAMILY.values())
    assert set(corpus.FAMILY_PITCH_RANGE) == set(FAMILIES)
    assert corpus.note_to_midi("A4") == 69 and corpus.note_to_midi("Cs4") == 61
    assert corpus.note_to_midi("C-1") == 0 and corpus.note_to_midi("H2") is None


def test_release_fade():
    x = np.ones(70_000, np.float32)
    y = corpus.release_fade(x)
    assert y.shape == (N,)
    np.testing.assert_array_equal(y[:48_000], 1.0)
    assert y[-1] == 0.0 and np.all(np.diff(y[48_000:]) <= 0)


def test_split_is_by_instrument_and_test_sets_held_out():
    p = corpus.CorpusParams()
    mk = lambda s, prog: corpus.Instrument(s, "/x.sf2", prog, "keyboard", "acoustic", "soundfont")  # noqa
    assert corpus.split_of(mk("FluidR3_GM", 0), p) == "test"
    assert corpus.split_of(mk("MuseScore_General", 5), p) == "test"
    splits = [corpus.split_of(mk("SomeBank", prog), p) for prog in range(128)]
    assert set(splits) == {"train", "valid"}
    assert 0.03 < splits.count("valid") / 128 < 0.3
    assert splits == [corpus.split_of(mk("SomeBank", prog), p) for prog in range(128)]


class _FakeSynth:
    """Stands in for tinysoundfont.Synth: a bank-0 piano; a variation that sounds different, one named like
    it (a copy), one that plays its samples unchanged, and a variation of a program with no family."""
    presets = {(0, 0): ("Piano 1", 1.0), (8, 0): ("Piano 1 (wide)", 3.0), (1, 0): ("Piano 1   ", 1.0),
               (16, 0): ("Detuned Piano", 1.0), (8, 80): ("Square Lead", 5.0)}

    def __init__(self, samplerate=44100):
        self.current = 0.0

    def sfload(self, path):
        return 0

    def sfpreset_name(self, sfid, bank, preset):
        return self.presets.get((bank, preset), (None,))[0]

    def program_select(self, chan, sfid, bank, preset):
        self.current = self.presets[(bank, preset)][1]

    def generate(self, frames):
        t = np.arange(frames) / 1000.0
        return np.sin(2 * np.pi * self.current * t).astype(np.float32).tobytes()

    notes_off = sounds_off = noteon = lambda self, *a: None


def test_bank_variations_keep_other_instruments_only(monkeypatch):
    """Copies (same name, or the same sound) and programs without a family are not instruments of their own."""
    import tinysoundfont
    monkeypatch.setattr(tinysoundfont, "Synth", _FakeSynth)
    assert corpus.bank_variations("/any.sf2") == [(8, 0)]


def test_variations_come_last_with_their_own_key(monkeypatch, tmp_path):
    """Variations are appended after every bank-0 instrument, so a corpus without them keeps its instrument
    order and names; their key (which seeds the render and the split) differs from the bank-0 preset's."""
    bank = tmp_path / "Bank.sf2"
    bank.write_bytes(b"")
    monkeypatch.setattr(corpus, "bank_variations", lambda path: [(8, 0), (16, 25)])
    plain = corpus.discover([str(bank)], [], synth_instruments=3)
    varied = corpus.discover([str(bank)], [], synth_instruments=3, variations=True)
    assert varied[:len(plain)] == plain
    extra = varied[len(plain):]
    assert [(i.bank, i.program, i.family) for i in extra] == [(8, 0, "keyboard"), (16, 25, "guitar")]
    base = next(i for i in plain if i.program == 0 and i.kind == "soundfont")
    assert extra[0].key != base.key and base.key == "Bank/0"


FLUID = "/usr/share/sounds/sf2/FluidR3_GM.sf2"


@pytest.mark.skipif(importlib.util.find_spec("tinysoundfont") is None or not os.path.isfile(FLUID),
                    reason=f"needs tinysoundfont and {FLUID} (apt-get install fluid-soundfont-gm)")
def test_variation_renders_another_sound(monkeypatch):
    """Fluid R3's bank-8 program 28 (Funk Guitar) is found, and at the same pitch and velocity it sounds
    unlike the bank-0 palm-muted guitar (render_soundfont selects the instrument's bank); its bank-8
    "Detuned EP 1" plays the bank-0 Rhodes samples unchanged here and is left out."""
    found = corpus.bank_variations(FLUID)
    assert (8, 28) in found and (8, 4) not in found
    monkeypatch.setattr(corpus, "_pitch_order", lambda inst, rng: np.array([60]))
    monkeypatch.setattr(corpus, "VELOCITIES", (100,))
    p = corpus.CorpusParams(notes_per_instrument=1, reverb_probability=0.0)
    muted = corpus.Instrument("FluidR3_GM", FLUID, 28, "guitar", "electronic", "soundfont")
    [(_, _, a)] = corpus.render_soundfont(muted, p)
    [(_, _, b)] = corpus.render_soundfont(dataclasses.replace(muted, bank=8), p)
    assert np.max(np.abs(a)) > 0.5 and np.max(np.abs(b)) > 0.5
    assert np.corrcoef(a, b)[0, 1] < 0.9
    # a missing variation renders nothing (the instrument is skipped), never the bank-0 preset instead
    assert corpus.render_soundfont(dataclasses.replace(muted, bank=99), p) == []




def test_tonejs_layout_is_read_with_its_family_and_set(tmp_path):
    """tonejs-instruments folders (`<note>.mp3`/`.wav`, no dynamic in the name) are recording instruments of
    their own sample set, classed by ``RECORDING_FAMILY``; unknown folders and names without a note are skipped."""
    import soundfile as sf
    t = np.arange(2 * 16000) / 16000
    for folder, notes in (("harmonium", ("A3", "Cs4", "readme")), ("bass-electric", ("E1",)),
                          ("kazoo", ("A4",))):
        (tmp_path / "tonejs" / folder).mkdir(parents=True)
        for n in notes:
            sf.write(tmp_path / "tonejs" / folder / f"{n}.wav", 0.5 * np.sin(2 * np.pi * 220 * t), 16000)
    found = corpus.discover([], [str(tmp_path / "tonejs")])
    assert [(i.sample_set, os.path.basename(i.path), i.family, i.source) for i in found] == [
        ("tonejs", "bass-electric", "bass", "electronic"), ("tonejs", "harmonium", "organ", "acoustic")]
    assert found[1].key == "tonejs/harmonium"
    notes = corpus.render_recordings(found[1], corpus.CorpusParams(reverb_probability=0.0))
    assert sorted((p, v) for p, v, _ in notes) == [(57, 75), (61, 75)]
    assert corpus.recording_note("oboe_A4_long_forte_normal.mp3") == (69, 100)
    assert corpus.recording_note("As2.mp3") == (46, 75) and corpus.recording_note("index.js")[0] is None
    assert set(corpus.TONEJS_INSTRUMENTS) <= set(corpus.RECORDING_FAMILY)
    assert all(fam in FAMILIES and src in NSYNTH_SOURCE_NAMES for fam, src in corpus.RECORDING_FAMILY.values())


def test_fetch_tonejs_without_npm_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(schema.DataError, match="npm not found"):
        corpus.fetch_tonejs(str(tmp_path / "tonejs"))


def test_default_sources_are_looked_for_beside_the_checkout():
    """The corpus's default ../shared banks and recordings are found from the checkout that holds the package,
    wherever the tools live inside it (a move into nsynth_cnn/tools once pointed this at nsynth_cnn/shared)."""
    from conftest import ROOT, SHARED
    assert os.path.realpath(corpus.SHARED) == os.path.realpath(SHARED)
    assert os.path.realpath(corpus.DEFAULT_SAMPLES[0]) == os.path.realpath(SHARED / "samples" / "philharmonia")
    from nsynth_cnn.tools import bench
    assert os.path.realpath(bench.REPO_ROOT) == os.path.realpath(ROOT)   # bench's cold-predict PYTHONPATH
