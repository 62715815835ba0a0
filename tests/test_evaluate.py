"""Known defects of the real data (issue 23): the pure-noise notes of brass_acoustic_046 are reported apart, and
notes with pitches outside 21-108 are read like any other; accuracy by source and pitch range."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_notes
from nsynth_cnn import data, evaluate, report, writers


def _probs_for(labels, right):
    """Probabilities that put the true family first exactly where ``right`` is true."""
    probs = np.full((len(labels), 10), 0.05, np.float32)
    for i, (lab, ok) in enumerate(zip(labels, right)):
        probs[i, lab if ok else (lab + 1) % 10] = 0.55
    return probs


def test_known_defects_are_reported_with_and_without():
    labels = np.array([1, 1, 1, 2, 3, 4])
    meta = {"instrument_str": np.array(["brass_acoustic_046"] * 3 + ["flute_synthetic_000", "guitar_acoustic_001",
                                                                      "keyboard_electronic_002"])}
    right = np.array([False, False, False, True, True, False])
    res = evaluate.metrics(labels, _probs_for(labels, right), meta)
    assert res["accuracy"] == pytest.approx(2 / 6)
    clean = res["without_known_defects"]
    assert clean["excluded_notes"] == 3 and clean["notes"] == 3 and clean["accuracy"] == pytest.approx(2 / 3)
    assert "magenta/magenta#2092" in clean["reasons"][0]
    assert "without_known_defects" not in evaluate.metrics(labels[3:], _probs_for(labels[3:], right[3:]),
                                                           {"instrument_str": meta["instrument_str"][3:]})
    assert "3 of these notes" in report.known_defects_note(meta)
    assert report.known_defects_note({"instrument_str": meta["instrument_str"][3:]}) == ""


def test_pitches_outside_nsynth_range_are_read_and_grouped(tmp_path):
    """magenta/magenta#1143: some official notes have pitches outside 21-108; they are data, not errors."""
    notes = make_notes(per_family=1, families=[0, 1, 2])
    for (meta, _), pitch in zip(notes, (9, 60, 120)):
        meta["pitch"] = pitch
        meta["note_str"] = f"{meta['instrument_str']}-{pitch:03d}-{meta['velocity']:03d}"
    path = str(tmp_path / "odd.tfrecord")
    writers.write_tfrecord(path, notes)
    _, meta = data.load_arrays(path)
    assert sorted(meta["pitch"].tolist()) == [9, 60, 120]
    labels = meta["label"]
    table = report.accuracy_by({"logmel": _probs_for(labels, [True, False, True])}, labels, meta, by="pitch")
    assert table.loc["below 21 (outside NSynth's range)", "notes"] == 1
    assert table.loc["above 108 (outside)", "notes"] == 1
    assert table["notes"].sum() == 3
    by_source = report.accuracy_by({"logmel": _probs_for(labels, [True, True, True])}, labels, meta, by="source")
    assert by_source["notes"].sum() == 3 and (by_source["logmel CNN"] == 1.0).all()
