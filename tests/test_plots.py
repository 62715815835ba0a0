"""Figures on awkward inputs: families with no notes or one note, an empty confusion row, no histories."""
from __future__ import annotations

import numpy as np

from conftest import N, synth_note
from nsynth_cnn import plots, selection


def texts(fig) -> str:
    parts = [t.get_text() for ax in fig.axes for t in ax.texts]
    parts += [ax.get_title(loc=loc) for ax in fig.axes for loc in ("left", "center", "right")]
    return "\n".join(parts)


def test_grids_say_why_a_panel_is_empty(tmp_path):
    # classes 0 and 1 have three notes, class 2 one note, classes 3..9 none
    labels = np.array([0, 0, 0, 1, 1, 1, 2])
    probs = np.full((7, 10), 0.02)
    for i, top in enumerate([0, 0, 5, 1, 1, 1, 2]):
        probs[i, top] = 0.82
    audio = np.stack([synth_note(i % 11, 50 + i, 100) for i in range(7)])
    meta = {"note_str": np.array([f"note{i}" for i in range(7)])}
    ex = selection.extremes(probs, labels)
    fig = plots.extremes_figure(audio, labels, ex, "logmel", meta, path=tmp_path / "x.png")
    t = texts(fig)
    assert "only one flute note (shown left)" in t and "no guitar notes in this data" in t
    assert "predicted mallet (0.82)" in t and "note2" in t
    nb = selection.near_boundary(probs, labels)
    fig = plots.boundary_figure(audio, labels, nb, "waveform", meta, path=tmp_path / "b.png")
    t = texts(fig)
    assert "no brass note misclassified" in t and "margin +0.800" in t
    assert (tmp_path / "x.png").read_bytes()[:4] == b"\x89PNG" and (tmp_path / "b.png").stat().st_size > 10_000


def test_confusion_with_an_empty_row_and_missing_histories(tmp_path):
    cm = np.diag(np.arange(10)) + 1
    cm[3] = 0                                          # a family with no notes
    fig = plots.confusion(cm, "waveform", path=tmp_path / "c.png")
    assert "guitar (n=0)" in [t.get_text() for t in fig.axes[0].get_yticklabels()]
    fig = plots.learning_curves({}, path=tmp_path / "l.png")
    assert "no training history found" in texts(fig)
    assert (tmp_path / "c.png").is_file() and (tmp_path / "l.png").is_file()


def test_waveform_axes_are_seconds_and_full_scale(tmp_path):
    note = synth_note(2, 60, 127)
    fig = plots.waveform(note, "flute", path=tmp_path / "w.png")
    ax = fig.axes[0]
    assert ax.get_xlim() == (0.0, N / 16_000)
    assert ax.get_ylim()[0] <= -1.0 and ax.get_ylim()[1] >= 1.0
    assert ax.get_xlabel() == "time (s)" and ax.get_ylabel() == "amplitude"
