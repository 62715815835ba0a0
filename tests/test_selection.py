"""Example selection on hand-made probability matrices whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest

from nsynth_cnn import selection

# 3 classes; rows are notes. Comments give p_true, the rival class and the margin.
PROBS = np.array([
    [0.90, 0.05, 0.05],   # 0: class 0, p 0.90, rival 1, margin +0.85
    [0.50, 0.45, 0.05],   # 1: class 0, p 0.50, rival 1, margin +0.05  <- smallest positive margin, class 0
    [0.30, 0.60, 0.10],   # 2: class 0, p 0.30, rival 1, margin -0.30  <- wrong, closest to boundary, class 0
    [0.10, 0.10, 0.80],   # 3: class 0, p 0.10, rival 2, margin -0.70  <- lowest p_true, class 0
    [0.20, 0.70, 0.10],   # 4: class 1, p 0.70, rival 0, margin +0.50  <- class 1's only note
    [0.35, 0.30, 0.35],   # 5: class 2, p 0.35, rival 0, margin  0.00  <- tie: counts as wrong
    [0.05, 0.15, 0.80],   # 6: class 2, p 0.80, rival 1, margin +0.65
])
LABELS = np.array([0, 0, 0, 0, 1, 2, 2])


def test_margins_rival_and_sign():
    p_true, rival, p_rival, margin = selection.margins(PROBS, LABELS)
    np.testing.assert_allclose(p_true, [0.9, 0.5, 0.3, 0.1, 0.7, 0.35, 0.8])
    assert rival.tolist() == [1, 1, 1, 2, 0, 0, 1]
    np.testing.assert_allclose(p_rival, [0.05, 0.45, 0.6, 0.8, 0.2, 0.35, 0.15])
    np.testing.assert_allclose(margin, [0.85, 0.05, -0.3, -0.7, 0.5, 0.0, 0.65], atol=1e-12)


def test_margin_sign_agrees_with_argmax_prediction():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=500)
    labels = rng.integers(0, 10, 500)
    *_, margin = selection.margins(probs, labels)
    assert np.array_equal(margin > 0, probs.argmax(1) == labels)


def test_extremes_highest_and_lowest_per_class():
    ex = selection.extremes(PROBS, LABELS, num_classes=4)
    assert ex[0]["highest"].index == 0 and ex[0]["lowest"].index == 3
    assert ex[0]["lowest"].predicted == 2 and not ex[0]["lowest"].correct
    assert ex[0]["highest"].predicted == 0 and ex[0]["highest"].correct
    assert ex[2]["highest"].index == 6 and ex[2]["lowest"].index == 5
    # one note: shown once, as highest; no notes: nothing
    assert ex[1]["highest"].index == 4 and ex[1]["lowest"] is None
    assert ex[3] == {"highest": None, "lowest": None}


def test_near_boundary_smallest_margins_each_side():
    nb = selection.near_boundary(PROBS, LABELS, num_classes=4)
    above, below = nb[0]["above"], nb[0]["below"]
    assert above.index == 1 and above.margin == pytest.approx(0.05) and above.predicted == 0
    assert below.index == 2 and below.margin == pytest.approx(-0.3) and below.predicted == 1
    assert nb[1]["above"].index == 4 and nb[1]["below"] is None        # never wrong
    assert nb[2]["above"].index == 6 and nb[2]["below"].index == 5       # the tie sits below
    assert nb[3] == {"above": None, "below": None}


def test_ties_go_to_lowest_index():
    probs = np.array([[0.6, 0.4], [0.6, 0.4], [0.4, 0.6], [0.4, 0.6]])
    labels = np.array([0, 0, 0, 0])
    ex = selection.extremes(probs, labels, num_classes=2)
    assert ex[0]["highest"].index == 0 and ex[0]["lowest"].index == 2
    nb = selection.near_boundary(probs, labels, num_classes=2)
    assert nb[0]["above"].index == 0 and nb[0]["below"].index == 2


def test_default_ten_classes_and_table():
    probs = np.full((3, 10), 0.05)
    probs[0, 0], probs[1, 3], probs[2, 9] = 0.55, 0.55, 0.55
    labels = np.array([0, 4, 9])       # note 1 is a keyboard note predicted guitar
    ex = selection.extremes(probs, labels)
    assert set(ex) == set(range(10))
    assert ex[4]["highest"].predicted == 3
    table = selection.picks_table(ex, {"note_str": np.array(["a", "b", "c"])})
    assert len(table) == 20
    row = table[(table["class"] == "keyboard") & (table["slot"] == "highest")].iloc[0]
    assert row["note"] == "b" and row["predicted"] == "guitar" and row["margin"] == pytest.approx(-0.5)
    assert (table["note"] == "(none)").sum() == 20 - 3


@pytest.mark.parametrize("probs,labels", [
    (np.ones((3, 10)) / 10, np.array([0, 1])),        # length mismatch
    (np.ones((2, 10)) / 10, np.array([0, 10])),       # label out of range
    (np.ones(10) / 10, np.array([0])),                # not 2-D
])
def test_bad_shapes_raise(probs, labels):
    with pytest.raises(ValueError):
        selection.margins(probs, labels)


def test_showcase_note_is_the_loudest_of_the_family():
    audio = np.zeros((4, 100), np.float32)
    audio[0, 5], audio[1, 7], audio[2, 9], audio[3, 1] = 0.9, 0.3, -0.6, 0.2
    labels = np.array([0, 8, 8, 1])              # string = class 8
    assert selection.showcase_note(audio, labels, "string") == 2
    assert selection.showcase_note(audio, labels, "vocal") == 0       # no vocal note: loudest overall

