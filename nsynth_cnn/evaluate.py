"""Evaluation: stream a data source through a saved model; accuracy, per-class accuracy, confusion matrix.

``python -m nsynth_cnn evaluate --model {waveform,logmel,both} --data PATH [--out FILE.json] [--compare DIR]``

``--compare DIR`` also runs ``DIR``'s model of the same name on the same notes and reports the paired count
(notes right in one model only) with its exact McNemar p-value: on 50 real notes two accuracies 6 points apart
can be noise or not, and only the paired count tells.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from . import data, schema
from .weights import file_sha256, load_trained, weights_path
from .params import FAMILIES, NUM_CLASSES


@dataclasses.dataclass
class Predictions:
    """Per-note results of one model on one source (small: no audio kept unless asked)."""
    probs: np.ndarray                 # (n, 10)
    labels: np.ndarray                # (n,)
    meta: dict[str, np.ndarray]       # note_str, pitch, velocity, instrument_str, ...
    audio: np.ndarray | None = None   # (n, 64000) when keep_audio

    @property
    def predicted(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def predict_source(model, path, batch_size: int = 64, keep_audio: bool = False,
                   limit: int | None = None) -> Predictions:
    """Run ``model`` over every note of ``path`` in batches (streaming: one batch of audio in memory)."""
    ds = data.nsynth_dataset(path)
    if limit:
        ds = ds.take(limit)
    probs, labels, metas, audio = [], [], [], []
    keys = ("note_str", "instrument_str", "pitch", "velocity", "instrument_family", "instrument_source_str")
    for batch in data.iterate(ds.batch(batch_size).prefetch(2), path):
        probs.append(np.asarray(model.predict_on_batch(batch["audio"])))
        labels.append(batch["label"])
        metas.append({k: batch[k] for k in keys})
        if keep_audio:
            audio.append(batch["audio"])
    if not probs:
        raise schema.DataError(f"{path}: no notes to evaluate (empty, or only synth_lead notes).")
    meta = {k: np.concatenate([m[k] for m in metas]) for k in keys}
    for k in ("note_str", "instrument_str", "instrument_source_str"):
        meta[k] = np.array([s.decode() if isinstance(s, bytes) else s for s in meta[k]])
    return Predictions(np.concatenate(probs).astype(np.float32), np.concatenate(labels).astype(np.int64),
                       meta, np.concatenate(audio) if keep_audio else None)


# Notes of the official data that are known to be wrong: instrument_str -> (issue, what is wrong).
KNOWN_DEFECTS = {
    "brass_acoustic_046": ("magenta/magenta#2092", "its 71 test notes are pure noise"),
}


def known_defects(meta: dict) -> tuple[np.ndarray, list[str]]:
    """``(mask, reasons)``: which notes belong to an instrument of :data:`KNOWN_DEFECTS`, and why."""
    inst = np.asarray([s.decode() if isinstance(s, bytes) else str(s) for s in meta["instrument_str"]])
    mask = np.isin(inst, list(KNOWN_DEFECTS))
    reasons = [f"{name}: {why} ({issue})" for name, (issue, why) in KNOWN_DEFECTS.items() if name in set(inst)]
    return mask, reasons


def without_known_defects(labels: np.ndarray, probs: np.ndarray, meta: dict) -> dict | None:
    """Accuracy once the :data:`KNOWN_DEFECTS` notes are left out (None when the data holds none of them)."""
    mask, reasons = known_defects(meta)
    if not mask.any():
        return None
    keep = ~mask
    return {"excluded_notes": int(mask.sum()), "reasons": reasons, "notes": int(keep.sum()),
            "accuracy": float((probs[keep].argmax(axis=1) == labels[keep]).mean()) if keep.any() else None}


def metrics(labels: np.ndarray, probs: np.ndarray, meta: dict | None = None) -> dict:
    """Accuracy, per-class accuracy (None for a class with no notes), confusion matrix (rows = truth); with
    ``meta``, also the accuracy without the :data:`KNOWN_DEFECTS` notes when there are any."""
    from sklearn.metrics import confusion_matrix
    pred = probs.argmax(axis=1)
    cm = confusion_matrix(labels, pred, labels=list(range(NUM_CLASSES)))
    support = cm.sum(axis=1)
    per_class = {f: (float(cm[i, i] / support[i]) if support[i] else None) for i, f in enumerate(FAMILIES)}
    present = support > 0
    correct = int((pred == labels).sum())
    return {"notes": int(len(labels)), "accuracy": float((pred == labels).mean()),
            "accuracy_ci95": accuracy_interval(correct, int(len(labels))),
            "balanced_accuracy": float(np.mean(np.diag(cm)[present] / support[present])),
            "per_class_accuracy": per_class, "support": dict(zip(FAMILIES, support.tolist())),
            "confusion_matrix": cm.tolist(), "classes": list(FAMILIES),
            **({"without_known_defects": clean} if meta is not None and (clean := without_known_defects(
                labels, probs, meta)) is not None else {})}


def accuracy_interval(correct: int, notes: int, confidence: float = 0.95) -> list[float]:
    """Wilson score interval of an accuracy of ``correct`` out of ``notes`` (what a small evaluation set such as
    the 50 real NSynth notes can tell: 20 of 50 right is 0.28-0.54)."""
    from scipy.stats import binomtest
    ci = binomtest(correct, notes).proportion_ci(confidence, method="wilson")
    return [float(ci.low), float(ci.high)]


def paired_comparison(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """Two models' predictions on the same notes: notes right in ``a`` only, in ``b`` only, and the exact
    (binomial) McNemar p-value of that split (two-sided; 1.0 when no note is right in one model only)."""
    from scipy.stats import binomtest
    right_a, right_b = pred_a == labels, pred_b == labels
    only_a, only_b = int((right_a & ~right_b).sum()), int((right_b & ~right_a).sum())
    p = binomtest(only_a, only_a + only_b).pvalue if only_a + only_b else 1.0
    return {"right_only_here": only_a, "right_only_there": only_b, "both_right": int((right_a & right_b).sum()),
            "mcnemar_exact_p": float(p)}


def weights_file(name: str, weights_dir: str) -> dict:
    """Which saved network an evaluation used: its path and SHA-256 (recorded in every evaluation JSON)."""
    path = weights_path(weights_dir, name)
    return {"path": path, "sha256": file_sha256(path)}


def evaluate(name: str, path, weights_dir: str = "weights", batch_size: int = 64,
             compare_dir: str | None = None) -> dict:
    """``name``'s network in ``weights_dir`` on every note of ``path``: :func:`metrics`, the weights file used
    (path, SHA-256) and, with ``compare_dir``, the paired comparison with that folder's network."""
    model = load_trained(name, weights_dir)
    used = weights_file(name, weights_dir)
    pred = predict_source(model, path, batch_size)
    res = {"model": name, "data": str(path), "weights_file": used, **metrics(pred.labels, pred.probs, pred.meta)}
    if compare_dir:
        other_model = load_trained(name, compare_dir)
        other_used = weights_file(name, compare_dir)
        other = predict_source(other_model, path, batch_size)
        order = {n: i for i, n in enumerate(other.meta["note_str"])}      # pair the notes by name, not by position
        if len(order) != len(pred.labels) or set(order) != set(pred.meta["note_str"]):
            raise schema.DataError(f"{path}: the second pass read other notes than the first (or note names repeat); "
                                 "--compare needs a source whose notes have unique names.")
        other_pred = other.predicted[[order[n] for n in pred.meta["note_str"]]]
        res["paired"] = {"weights": str(compare_dir), "weights_file": other_used,
                         "accuracy": float((other_pred == pred.labels).mean()),
                         **paired_comparison(pred.labels, pred.predicted, other_pred)}
    return res


def add_parser(sub):
    ap = sub.add_parser("evaluate", help="accuracy, per-class accuracy and confusion matrix on NSynth data",
                        description="Run the saved networks over NSynth notes (streamed, any size): accuracy with "
                                    "its 95% interval, balanced and per-family accuracy, confusion matrix, accuracy "
                                    "with and without NSynth's known defective notes; printed and written as JSON. "
                                    "--compare pairs two weight folders on the same notes.")
    ap.add_argument("--model", default="both", choices=("waveform", "logmel", "both"),
                    help="which saved network to evaluate (default: both)")
    ap.add_argument("--data", required=True, help="TFRecord file, glob of them, or JSON+wav folder")
    ap.add_argument("--weights", default="weights", help="folder holding <model>_cnn.keras")
    ap.add_argument("--out", default=None, help="JSON file (default: evaluation_<model>.json)")

    def positive_int(text: str) -> int:
        import argparse
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of 1 or more")
        return int(text)

    ap.add_argument("--batch-size", type=positive_int, default=64, help="notes per batch (default: 64)")
    ap.add_argument("--compare", default=None, metavar="DIR",
                    help="also run DIR/<model>_cnn.keras on the same notes: paired count and exact McNemar p")
    ap.set_defaults(func=_main)


def _main(args):
    names = ("waveform", "logmel") if args.model == "both" else (args.model,)
    # Check where the results go before evaluating (not after, when the work would be lost): create the folder.
    out = args.out or f"evaluation_{args.model}.json"
    folder = os.path.dirname(os.path.abspath(out))
    if os.path.isdir(out):
        raise schema.DataError(f"--out {out!r} is a folder; give a file name, e.g. "
                             f"{os.path.join(out, 'evaluation.json')}.")
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise schema.DataError(f"--out {out!r}: cannot create its folder {folder} ({err.strerror or err}); choose "
                             "another --out.") from None
    if not os.access(folder, os.W_OK) or (os.path.exists(out) and not os.access(out, os.W_OK)):
        raise schema.DataError(f"--out {out!r}: cannot write there ({folder} is not writable); choose another --out.")
    results = {}
    for name in names:
        res = evaluate(name, args.data, args.weights, args.batch_size, args.compare)
        results[name] = res
        print(f"{name}: evaluated {res['notes']} notes from {args.data}: accuracy {res['accuracy']:.4f} "
              f"(95% interval {res['accuracy_ci95'][0]:.2f}-{res['accuracy_ci95'][1]:.2f}; "
              f"balanced {res['balanced_accuracy']:.4f})")
        print("  per class: " + ", ".join(f"{f} {'-' if a is None else f'{a:.2f}'}"
                                          for f, a in res["per_class_accuracy"].items()))
        if "paired" in res:
            pr = res["paired"]
            print(f"  paired with {pr['weights']} (accuracy {pr['accuracy']:.4f}): {pr['right_only_here']} notes "
                  f"right only in {args.weights}, {pr['right_only_there']} only in {pr['weights']} "
                  f"(exact McNemar p = {pr['mcnemar_exact_p']:.2g})")
    with open(out, "w") as fh:
        json.dump(results if len(results) > 1 else results[names[0]], fh, indent=1)
    print(f"wrote {out}")
    return 0
