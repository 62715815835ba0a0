"""Choosing the notes the report shows: per class, the most and least confident, and those nearest the boundary.

Everything here works on a probability matrix ``probs`` (n notes x 10 classes) and the true ``labels`` (n,);
nothing loads models or audio. For note ``i`` of true class ``c``:

* ``p_true = probs[i, c]``: the probability the network gives the correct class;
* ``rival`` = the strongest *other* class, ``argmax_{k != c} probs[i, k]``, with probability ``p_rival``;
* ``margin = p_true - p_rival``. The note is classified correctly exactly when ``margin > 0`` (the
  prediction is the true class) and misclassified when ``margin < 0`` (the prediction is the rival); so the
  decision boundary between the true class and its nearest competitor is ``margin = 0``.

*Near the boundary*, per class: the correctly classified note with the **smallest positive margin** (just
above) and the misclassified note with the **negative margin of smallest magnitude** (just below). "Near" is
relative: it is the closest note the data has, so on a small sample its margin can still be large; the margin
is always shown. A tie at exactly ``margin == 0`` counts as misclassified (``argmax`` may pick either class).
Ties in any ranking go to the lowest note index, so selections are deterministic.

A selection is ``None`` where the class has no note that qualifies (no notes at all, only one note for the
"lowest" slot, no correct or no wrong prediction for a boundary slot); plots turn that into a labelled empty
panel.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .params import FAMILIES, NUM_CLASSES


@dataclasses.dataclass(frozen=True)
class Pick:
    """One selected note and why: its index into the arrays, true class, and the competing class."""
    index: int
    label: int          # true class index
    p_true: float       # probability of the true class
    rival: int          # strongest other class
    p_rival: float      # its probability

    @property
    def margin(self) -> float:
        return self.p_true - self.p_rival

    @property
    def correct(self) -> bool:
        return self.margin > 0

    @property
    def predicted(self) -> int:
        return self.label if self.correct else self.rival


def _check(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if probs.ndim != 2 or probs.shape[0] != labels.shape[0] or probs.shape[1] < 2:
        raise ValueError(f"probs must be (n, classes) and labels (n,); got {probs.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise ValueError(f"labels must be class indices 0..{probs.shape[1] - 1}")
    return probs, labels


def margins(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per note: ``(p_true, rival, p_rival, margin)`` as defined in the module docstring."""
    probs, labels = _check(probs, labels)
    rows = np.arange(len(labels))
    p_true = probs[rows, labels]
    others = probs.copy()
    others[rows, labels] = -np.inf
    rival = others.argmax(axis=1)
    p_rival = others[rows, rival]
    return p_true, rival, p_rival, p_true - p_rival


def _pick(i: int, labels, p_true, rival, p_rival) -> Pick:
    return Pick(int(i), int(labels[i]), float(p_true[i]), int(rival[i]), float(p_rival[i]))


def _first(order: np.ndarray, idx: np.ndarray) -> int | None:
    return int(idx[order[0]]) if len(order) else None


def extremes(probs: np.ndarray, labels: np.ndarray,
             num_classes: int = NUM_CLASSES) -> dict[int, dict[str, Pick | None]]:
    """Per class: ``{"highest": Pick, "lowest": Pick}`` by correct-class probability.

    ``lowest`` is chosen among the class's other notes, so a class with one note has ``lowest = None``
    (the same note is not shown twice); a class with no notes has both ``None``.
    """
    p_true, rival, p_rival, _ = margins(probs, labels)
    labels = np.asarray(labels, np.int64)
    out = {}
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        hi = _first(np.argsort(-p_true[idx], kind="stable"), idx)
        rest = idx[idx != hi] if hi is not None else idx
        lo = _first(np.argsort(p_true[rest], kind="stable"), rest)
        out[c] = {k: None if i is None else _pick(i, labels, p_true, rival, p_rival)
                  for k, i in (("highest", hi), ("lowest", lo))}
    return out


def near_boundary(probs: np.ndarray, labels: np.ndarray,
                  num_classes: int = NUM_CLASSES) -> dict[int, dict[str, Pick | None]]:
    """Per class: ``{"above": Pick, "below": Pick}``: the smallest positive margin (correct, just) and the
    negative margin closest to zero (wrong, just). Either is ``None`` when no note of the class is on that side."""
    p_true, rival, p_rival, margin = margins(probs, labels)
    labels = np.asarray(labels, np.int64)
    out = {}
    for c in range(num_classes):
        idx = np.flatnonzero(labels == c)
        above, below = idx[margin[idx] > 0], idx[margin[idx] <= 0]
        a = _first(np.argsort(margin[above], kind="stable"), above)
        b = _first(np.argsort(-margin[below], kind="stable"), below)
        out[c] = {k: None if i is None else _pick(i, labels, p_true, rival, p_rival)
                  for k, i in (("above", a), ("below", b))}
    return out


def picks_table(picks: dict[int, dict[str, Pick | None]], meta: dict[str, np.ndarray] | None = None,
                classes=FAMILIES):
    """The selections as a pandas DataFrame (one row per class and slot) for the notebook."""
    import pandas as pd
    rows = []
    for c, slots in picks.items():
        for slot, p in slots.items():
            row = {"class": classes[c], "slot": slot}
            if p is None:
                row["note"] = "(none)"
            else:
                row.update({"note": meta["note_str"][p.index] if meta is not None else p.index,
                            "p_true": round(p.p_true, 3), "predicted": classes[p.predicted],
                            "rival": classes[p.rival], "p_rival": round(p.p_rival, 3),
                            "margin": round(p.margin, 4)})
            rows.append(row)
    return pd.DataFrame(rows)


def showcase_note(audio: np.ndarray, labels: np.ndarray, family: str = "string", classes=FAMILIES) -> int:
    """Index of the note to show as *the* example waveform: the loudest (highest peak) note of ``family``,
    so it reads well on a fixed [-1, 1] axis; the loudest note overall if the family has none."""
    peaks = np.max(np.abs(np.asarray(audio)), axis=1)
    idx = np.flatnonzero(np.asarray(labels) == classes.index(family)) if family in classes else np.array([], int)
    if idx.size == 0:
        idx = np.arange(len(peaks))
    return int(idx[np.argmax(peaks[idx])])
