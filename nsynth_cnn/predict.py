"""``python -m nsynth_cnn predict FILE... [--json]``: top-3 families for any audio file.

Any common format (wav, flac, ogg, mp3), any sample rate, mono or stereo: the file is mixed to mono,
resampled to 16 kHz, and the 4 s from the first onset (leading silence skipped) are classified,
zero padded when shorter. Only the first 30 s of a file are decoded (``MAX_DECODE_SECONDS``): the onset must
lie in them. A file that is cut short is classified from what it holds, with a ``warning:`` line on stderr (with
``--json``, a ``"warning"`` field).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from . import schema
from .weights import load_trained
from .params import FAMILIES
from .audio import load_audio


def classify(models: dict, audio: np.ndarray, top: int = 3) -> dict:
    """``{model: [(family, prob), ...top]}`` plus full probability vectors, for one 64,000-sample note."""
    out = {}
    for name, model in models.items():
        probs = np.asarray(model.predict_on_batch(audio[None, :].astype(np.float32)))[0]
        order = np.argsort(probs)[::-1][:top]
        out[name] = {"top": [{"family": FAMILIES[i], "probability": round(float(probs[i]), 4)} for i in order],
                     "probabilities": {f: round(float(p), 4) for f, p in zip(FAMILIES, probs)}}
    return out


def add_parser(sub):
    ap = sub.add_parser("predict", help="top-3 instrument families for audio files",
                        description="Top instrument families of any recording (wav, flac, ogg, mp3; any sample "
                                    "rate, mono or stereo): mixed to mono, resampled to 16 kHz, and the 4 s from "
                                    "the first onset are classified (zero padded when shorter).")
    ap.add_argument("files", nargs="+", metavar="FILE", help="audio files to classify")
    ap.add_argument("--model", default="both", choices=("waveform", "logmel", "both"),
                    help="which saved network answers (default: both)")
    ap.add_argument("--weights", default="weights", help="folder holding <model>_cnn.keras (default: weights)")
    ap.add_argument("--top", type=_top_count, default=3, metavar=f"1..{len(FAMILIES)}",
                    help="families listed per model (default: 3)")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.set_defaults(func=_main)


def _top_count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= len(FAMILIES):
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number from 1 to {len(FAMILIES)} (there are "
                                         f"{len(FAMILIES)} families)")
    return n


def _main(args):
    names = ("waveform", "logmel") if args.model == "both" else (args.model,)
    models = {n: load_trained(n, args.weights) for n in names}
    results, failed = [], 0
    for path in args.files:
        notes: list[str] = []
        try:
            audio = load_audio(path, reject_silent=True, onset_trim=True, on_warning=notes.append)
        except schema.DataError as err:
            failed += 1
            results.append({"file": path, "error": str(err)})
            if not args.json:
                print(f"error: {err}", file=sys.stderr)
            continue
        res = {"file": path, **({"warning": " ".join(notes)} if notes else {}), **classify(models, audio, args.top)}
        results.append(res)
        if not args.json:
            for note in notes:
                print(f"warning: {note}", file=sys.stderr)
            print(path)
            for n in names:
                print(f"  {n:9s} " + "  ".join(f"{t['family']} {t['probability']:.2f}" for t in res[n]["top"]))
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=1))
    return 2 if failed else 0
