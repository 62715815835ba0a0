"""Glue for the report notebook: where the data is, what the shipped weights were trained on, summary tables.

Kept out of the notebook so its cells are only calls. Nothing here trains or plots.
"""
from __future__ import annotations

import os

from . import schema
from .evaluate import known_defects
from .params import FAMILIES, RECIPE, TrainParams
from .weights import DEFAULT_DIR, load_history, weights_path

SHIPPED_FIGURES_DIR = "figures"
NOTEBOOK_OUT_DIR = os.path.join("runs", "notebook")


def run_folders(mode: str, data_dir, weights_dir: str = DEFAULT_DIR, out_dir: str = "") -> tuple[str, str]:
    """``(weights_dir, figures_dir)`` of a notebook run. Only the shipped report (``MODE = "evaluate"`` on the
    default ``DATA_DIR`` with the shipped ``weights/`` and no ``OUT_DIR``) writes the tracked ``figures/``. Any other
    run writes into ``out_dir`` (default ``runs/notebook``): its figures in ``<out>/figures`` and, in train mode,
    the networks it trains and their evaluation in ``<out>/weights``, so tracked files are never overwritten."""
    from .splits import DEFAULT_DATA_DIR
    if mode not in ("evaluate", "train"):
        raise schema.DataError(f"MODE must be 'evaluate' or 'train', not {mode!r}.")
    shipped = (mode == "evaluate" and not out_dir and os.path.normpath(os.fspath(data_dir)) == DEFAULT_DATA_DIR
               and os.path.normpath(weights_dir) == DEFAULT_DIR)
    if shipped:
        return weights_dir, SHIPPED_FIGURES_DIR
    out = out_dir or NOTEBOOK_OUT_DIR
    return (os.path.join(out, "weights") if mode == "train" else weights_dir), os.path.join(out, "figures")


def save_evaluation(results: dict[str, dict], weights_dir: str, eval_path: str) -> str:
    """Write this run's results next to the networks it evaluated (``<weights_dir>/evaluation_notebook.json``), each
    with the weights file it used and its SHA-256; returns the path."""
    import hashlib
    import json

    from .atomic import write_json_atomic
    out = {}
    for name, res in results.items():
        path = weights_path(weights_dir, name)
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
        out[name] = {"model": name, "data": str(eval_path), "weights_file": path, "weights_sha256": digest, **res}
    target = os.path.join(weights_dir, "evaluation_notebook.json")
    write_json_atomic(target, json.loads(json.dumps(out, default=_jsonable)))
    return target


def _jsonable(v):
    import numpy as np
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"{type(v).__name__} is not JSON serialisable")


def trained_on_rendered_corpus(histories: dict[str, dict]) -> bool:
    """Whether the networks' histories say they were trained on this project's rendered corpus (``corpus*/``, as
    the shipped weights were), not on NSynth."""
    paths = [h.get("meta", {}).get("train_data", "") for h in histories.values()]
    return bool(paths) and all(any(part.startswith("corpus") for part in os.path.normpath(p).split(os.sep))
                               for p in paths)


CORPUS_PROVENANCE = """\
> **What these weights were trained on.** NSynth itself could not be downloaded where this project was
> built, so these networks were trained on an NSynth-format corpus rendered with
> `python -m nsynth_cnn.tools corpus` from 22 sample sets: 21 General-MIDI SoundFonts (6 Debian packages,
> 9 per-program GM banks, 6 small ROM banks; every GM preset and the complete banks' variation presets such as
> "12-String Guitar" or "Church Organ 2") and the Philharmonia Orchestra single-note recordings, plus
> procedural electronic instruments (organs, synth basses, electric pianos); see `docs/corpus.md`. It follows
> NSynth's protocol (4 s at 16 kHz, held 3 s, velocities 25-127) and is split by instrument; its test split is
> a whole SoundFont family never heard in training. It differs from NSynth in sound: clean sampled or
> synthesised GM instruments rather than NSynth's commercial sample libraries, and releases that ring on after
> note-off where NSynth's notes mostly stop within 0.1-0.3 s (the networks are trained with a random release to
> compensate). The next table gives what they scored on each yardstick they were measured on (read from
> `evaluation_*.json` beside the weights); the gap between rendered and real notes dominates."""


def provenance_paragraph(histories: dict[str, dict], weights_dir: str, trained_here: bool) -> str:
    """Markdown: what the evaluated networks were trained on, read from their histories, so it is true for
    whatever weights this run evaluates (the shipped ones, or ones this run or another trained)."""
    if not histories:
        return f"> The networks in `{weights_dir}` have no training history beside them: what they were trained on is unknown."
    if trained_here:
        meta = next(iter(histories.values())).get("meta", {})
        return (f"> **What these weights were trained on.** This run trained both networks with the recipe on "
                f"`{meta.get('train_data')}` (validation: `{meta.get('valid_data')}`) and saved them in "
                f"`{weights_dir}`. They have no measurements yet except this run's, which the Results section "
                "writes next to them (`evaluation_notebook.json`).")
    if trained_on_rendered_corpus(histories):
        return CORPUS_PROVENANCE
    rows = "; ".join(f"the {n} CNN on `{h.get('meta', {}).get('train_data', '?')}`" for n, h in histories.items())
    return (f"> **What these weights were trained on.** According to their training histories: {rows}. The next "
            f"table gives the evaluations saved beside them in `{weights_dir}` (none if empty).")


def domain_paragraph(histories: dict[str, dict]) -> str:
    """Markdown for the Discussion: how the evaluated networks' training data relates to NSynth's test split."""
    if trained_on_rendered_corpus(histories):
        return ("Published networks trained on NSynth itself reach 72-77 % on its test split; these networks never "
                "heard a real NSynth instrument: they were trained on a rendered corpus (SoundFonts + Philharmonia "
                "recordings), so a domain shift between the training instruments and NSynth's is part of what the "
                "test accuracy measures. The experiment log (`docs/experiments.md`) records, run by run, what "
                "narrowed the gap between rendered and real notes (more distinct instruments, a shared pitch range, "
                "and above all the random release) and what did not (more rendered instruments of the kinds the "
                "corpus already had, augmentations aimed at the gap between sample sets, a higher waveform rate). The waveform "
                "CNN's gain on the corpus came mostly from keeping its filterbank a filterbank (see Architectures) "
                "and from its distillation stage; on the real notes it still trails the log-mel CNN.")
    return ("Published networks trained on NSynth itself reach 72-77 % on its test split (4,096 notes of instruments "
            "never heard in training); the accuracy above is comparable with that range only when `DATA_DIR` holds "
            "that test split and the networks were trained on NSynth's train split.")


def load_histories(weights_dir: str = "weights", names=("waveform", "logmel")) -> dict[str, dict]:
    """``{name: history}`` for every network whose history JSON exists in ``weights_dir``."""
    return {n: h for n in names if (h := load_history(n, weights_dir))}


def training_meta_table(histories: dict[str, dict]):
    """One row per network: what its weights were trained on and how long (from the history ``meta``)."""
    import pandas as pd
    rows = []
    for name, h in histories.items():
        meta = h.get("meta", {})
        va = h.get("val_accuracy") or []
        rows.append({"network": name, "train_data": meta.get("train_data", "?"),
                     "valid_data": meta.get("valid_data", "?"),
                     "started from": meta.get("init_from") or "random weights",
                     "teacher": meta.get("teacher") or "-", "epochs run": len(h.get("epoch", [])),
                     "families per batch": meta.get("families_per_batch", "not recorded"),
                     "best val accuracy": round(max(va), 4) if va else None,
                     "training wall time (s)": round(sum(h["epoch_seconds"]), 1) if h.get("epoch_seconds")
                     else meta.get("wall_seconds_last_run"),
                     "gpu": meta.get("gpu")})
    return pd.DataFrame(rows).set_index("network") if rows else pd.DataFrame()


def recipe_table(recipe=RECIPE, p: TrainParams = TrainParams()):
    """The training recipe (:data:`nsynth_cnn.params.RECIPE`), one row per stage."""
    import pandas as pd
    rows = [{"stage": i + 1, "network": s.model, "epochs": s.epochs,
             "starts from": f"stage {next(j + 1 for j, t in enumerate(recipe) if t.out == s.init_from)}"
             if s.init_from else "random weights",
             "teacher": "the log-mel CNN" if s.teacher else "-",
             "peak learning rate": p.learning_rate if s.learning_rate is None else s.learning_rate,
             "warm-up epochs": p.warmup_epochs if s.warmup_epochs is None else s.warmup_epochs,
             "result": "intermediate" if s.out else weights_path("weights", s.model)} for i, s in enumerate(recipe)]
    return pd.DataFrame(rows).set_index("stage")


YARDSTICKS = {   # <weights>/evaluation_<key>.json -> what it measured (written by `make weights`, the tools, the notebook)
    "corpus_test": "rendered corpus, test split (an unseen SoundFont family)",
    "real_nsynth": "real NSynth notes (../shared/nsynth-real)",
    "tonejs": "tonejs-instruments recordings (make evaluate-recordings)",
    "freepats": "freepats GUS patches (make evaluate-freepats)",
    "notebook": "this notebook's evaluation data, when it trained these networks",
}


def shipped_evaluations(weights_dir: str = "weights") -> dict[str, dict]:
    """``{yardstick: {network: evaluation}}`` from the ``evaluation_*.json`` files saved beside the weights."""
    import json
    found = {}
    for key in YARDSTICKS:
        path = os.path.join(weights_dir, f"evaluation_{key}.json")
        if os.path.isfile(path):
            with open(path) as fh:
                found[key] = json.load(fh)
    return found


def yardsticks_table(weights_dir: str = "weights"):
    """Accuracy (notes, 95% interval) of each saved network on each yardstick it was measured on."""
    import pandas as pd
    rows = []
    for key, by_net in shipped_evaluations(weights_dir).items():
        row = {"evaluated on": YARDSTICKS[key] if key != "notebook"
               else f"`{next(iter(by_net.values()))['data']}` (evaluated by the notebook run that trained them)"}
        for name, res in by_net.items():
            lo, hi = res["accuracy_ci95"]
            row["notes"] = res["notes"]
            row[f"{name} CNN"] = f"{res['accuracy']:.3f} ({lo:.2f}-{hi:.2f})"
        rows.append(row)
    return pd.DataFrame(rows).set_index("evaluated on") if rows else pd.DataFrame()


PITCH_RANGES = ((0, 20, "below 21 (outside NSynth's range)"), (21, 47, "21-47 (A0-B2)"), (48, 71, "48-71 (C3-B4)"),
                (72, 95, "72-95 (C5-B6)"), (96, 108, "96-108 (C7-C8)"), (109, 127, "above 108 (outside)"))


def accuracy_by(probs: dict, labels, meta, by: str):
    """Accuracy of each network per instrument source (``by="source"``: acoustic / electronic / synthetic) or
    per MIDI pitch range (``by="pitch"``), with the number of notes in each group."""
    import numpy as np
    import pandas as pd
    labels = np.asarray(labels)
    if by == "source":
        groups = [(src, np.asarray(meta["instrument_source_str"]) == src)
                  for src in ("acoustic", "electronic", "synthetic")]
    elif by == "pitch":
        pitch = np.asarray(meta["pitch"])
        groups = [(name, (pitch >= lo) & (pitch <= hi)) for lo, hi, name in PITCH_RANGES]
    else:
        raise ValueError(f"by must be 'source' or 'pitch', not {by!r}")
    rows = []
    for group, mask in groups:
        if not mask.any():
            continue
        row = {by: group, "notes": int(mask.sum())}
        row.update({f"{n} CNN": float((p[mask].argmax(axis=1) == labels[mask]).mean()) for n, p in probs.items()})
        rows.append(row)
    return pd.DataFrame(rows).set_index(by).round(3)


def known_defects_note(meta) -> str:
    """A sentence on the evaluation notes that :func:`nsynth_cnn.evaluate.known_defects` flags (empty if none)."""
    mask, reasons = known_defects(meta)
    if not mask.any():
        return ""
    return (f"{int(mask.sum())} of these notes are known defects of NSynth ({'; '.join(reasons)}); the table "
            "below gives each network's accuracy with and without them.")


def _accuracy_text(res: dict) -> str:
    lo, hi = res["accuracy_ci95"]
    return f"{res['accuracy']:.3f} (95% interval {lo:.2f}-{hi:.2f})"


def numbers_paragraph(weights_dir: str, results: dict[str, dict], path: str) -> str:
    """The Discussion's numbers, as Markdown, read from this run's results and the saved yardsticks (nothing is
    typed in): the accuracy on ``path`` and, when measured, the real NSynth notes against the corpus test split."""
    notes = next(iter(results.values()))["notes"]
    text = (f"**The numbers.** On this run's evaluation data (`{path}`, {notes} notes): "
            + "; ".join(f"{name} CNN {_accuracy_text(r)}" for name, r in results.items()) + ".")
    saved = shipped_evaluations(weights_dir)
    if "real_nsynth" in saved and "corpus_test" in saved:
        text += (" The yardsticks table under Training puts the saved networks at "
                 + "; ".join(f"{name} CNN {saved['real_nsynth'][name]['accuracy']:.2f} on the "
                             f"{saved['real_nsynth'][name]['notes']} real NSynth notes against "
                             f"{saved['corpus_test'][name]['accuracy']:.2f} on the corpus test split"
                             for name in results if name in saved["real_nsynth"] and name in saved["corpus_test"])
                 + ".")
    return text


def results_table(results: dict[str, dict]):
    """Accuracy, balanced accuracy and per-family accuracy of each network (``evaluate.metrics`` dicts)."""
    import pandas as pd
    rows = {}
    for name, res in results.items():
        lo, hi = res["accuracy_ci95"]
        row = {"notes": res["notes"], "accuracy": res["accuracy"], "95% interval": f"{lo:.2f}-{hi:.2f}",
               "balanced accuracy": res["balanced_accuracy"]}
        if res.get("without_known_defects"):
            row["accuracy without known defects"] = res["without_known_defects"]["accuracy"]
        row.update({f: res["per_class_accuracy"][f] for f in FAMILIES})
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index").round(3)


def class_counts(labels, classes=FAMILIES):
    """Notes per family in an evaluation set (a one-row DataFrame, families as columns)."""
    import numpy as np
    import pandas as pd
    counts = np.bincount(np.asarray(labels, int), minlength=len(classes))
    return pd.DataFrame([counts], index=["notes"], columns=list(classes)).assign(total=int(counts.sum()))


def architecture_table(model):
    """A built or loaded network as a table, one row per stage: front end, each ``blockN``, the head.

    Columns: the layers of the stage, its convolution as ``filters x kernel / stride`` (and pooling), its
    output shape (without the batch axis) and its parameter count.
    Augmentation layers (``aug_*``) are marked: they act only during training.
    """
    import pandas as pd
    stages: dict[str, list] = {}
    for layer in model.layers:
        stage = layer.name.split("_")[0] if layer.name.startswith("block") else layer.name
        stages.setdefault(stage, []).append(layer)
    rows = []
    for stage, group in stages.items():
        last = group[-1]
        shape = tuple(last.output.shape[1:]) if hasattr(last, "output") else ()
        kinds = " -> ".join(_short_name(type(layer).__name__) for layer in group)
        if stage.startswith("aug"):
            kinds += " (training only)"
        conv = next((layer for layer in group if hasattr(layer, "filters")), None)
        detail = "" if conv is None else f"{conv.filters} x {_dims(conv.kernel_size)} / {_dims(conv.strides)}"
        pool = next((getattr(layer, "pool_size", None) or getattr(layer, "pool", None) for layer in group
                     if hasattr(layer, "pool_size") or isinstance(getattr(layer, "pool", None), int)), None)
        detail += f", pool {_dims(pool)}" if pool else ""
        rows.append({"stage": stage, "layers": kinds, "convolution": detail, "output shape": str(shape),
                     "parameters": sum(layer.count_params() for layer in group)})
    df = pd.DataFrame(rows).set_index("stage")
    df.loc["total"] = ["", "", "", model.count_params()]
    return df


def _short_name(cls: str) -> str:
    for long, short in (("BatchNormalization", "BN"), ("GlobalAveragePooling", "GlobalAvgPool"),
                        ("MaxPooling", "MaxPool")):
        cls = cls.replace(long, short)
    return cls


def _dims(v) -> str:
    v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
    return "x".join(str(int(x)) for x in v)


def top_confusions(cm, k: int = 5, classes=FAMILIES):
    """The ``k`` most frequent (true -> predicted) mistakes in a confusion matrix, as a DataFrame."""
    import numpy as np
    import pandas as pd
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    off = [(cm[i, j], i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return pd.DataFrame([{"true": classes[i], "predicted": classes[j], "notes": int(n),
                          "share of true family": round(n / support[i], 3)} for n, i, j in off[:k]])


def confusions_side_by_side(cms: dict, k: int = 5, classes=FAMILIES):
    """:func:`top_confusions` of several networks next to each other (``cms``: ``{name: confusion matrix}``)."""
    import pandas as pd
    return pd.concat({name: top_confusions(cm, k, classes) for name, cm in cms.items()}, axis=1)


def selections_table(picks_by_model: dict, meta=None, classes=FAMILIES):
    """Selections (``selection.extremes`` / ``near_boundary`` results) of several networks in one table:
    one row per network and family, the note and margin of each slot."""
    import pandas as pd
    from .selection import picks_table
    frames = []
    for name, picks in picks_by_model.items():
        t = picks_table(picks, meta, classes)
        t.insert(0, "network", name)
        frames.append(t)
    df = pd.concat(frames, ignore_index=True)
    cols = [c for c in ("note", "margin", "predicted") if c in df.columns]
    wide = df.pivot_table(index=["network", "class"], columns="slot", values=cols, aggfunc="first", sort=False)
    wide = wide.swaplevel(0, 1, axis=1)
    slots = list(dict.fromkeys(df["slot"]))
    return wide.reindex(columns=pd.MultiIndex.from_product([slots, cols])).fillna("-")


def params_table(*param_objects):
    """Every field of the given ``params`` dataclasses as one two-column table (what the text quotes)."""
    import dataclasses
    import pandas as pd
    rows = [(type(p).__name__, f.name, str(getattr(p, f.name))) for p in param_objects
            for f in dataclasses.fields(p)]
    return pd.DataFrame(rows, columns=["group", "parameter", "value"]).set_index(["group", "parameter"])


# ----------------------------------------------------------------------------------------------- deliverable
