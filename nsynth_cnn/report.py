"""Glue for the report notebook: where the data is, what the shipped weights were trained on, summary tables.

Kept out of the notebook so its cells are only calls. Nothing here trains or plots.
"""
from __future__ import annotations

import glob
import os

from . import data
from .atomic import write_text_atomic
from .evaluate import known_defects
from .params import FAMILIES, MODEL_NAMES, RECIPE, TrainParams
from .weights import load_history, weights_path

SAMPLE_DIR = os.path.join("data", "nsynth-sample")
"""NSynth-format sample shipped in the repository (JSON+wav layout), used when no NSynth split is found."""


def find_split(data_dir: str | os.PathLike, split: str) -> str | None:
    """The NSynth ``split`` (train/valid/test) inside ``data_dir``, or None.

    Looks for, in order: ``nsynth-<split>.tfrecord`` (also ``.gz``), sharded TFRecords
    (``nsynth-<split>.tfrecord-00000-of-00016``, ``nsynth-<split>-*.tfrecord*``; returned as a glob), the official
    JSON+wav folder ``nsynth-<split>/`` (examples.json + audio/), this project's corpus layout ``<split>/``
    (TFRecord shards or ``<split>/jsonwav``), and NSynth as TensorFlow Datasets prepares it
    (``nsynth/full/<version>/nsynth-<split>.tfrecord-*``, newest version; ``data_dir`` may be the TFDS data dir,
    ``.../nsynth`` or ``.../nsynth/full``). ``data_dir`` may also *be* a TFRecord file or a JSON+wav folder; it
    is then used as the test split.
    """
    data_dir = os.fspath(data_dir)
    if not os.path.exists(data_dir):
        return None
    if os.path.isfile(data_dir) or os.path.isfile(os.path.join(data_dir, "examples.json")):
        return data_dir if split == "test" else None
    for name in (f"nsynth-{split}.tfrecord", f"nsynth-{split}.tfrecord.gz"):
        if os.path.isfile(os.path.join(data_dir, name)):
            return os.path.join(data_dir, name)
    for pattern in (f"nsynth-{split}.tfrecord-*", f"nsynth-{split}-*.tfrecord*"):
        if any(os.path.isfile(f) for f in glob.glob(os.path.join(glob.escape(data_dir), pattern))):
            return os.path.join(data_dir, pattern)
    for folder in (f"nsynth-{split}", split, os.path.join(split, "jsonwav")):
        path = os.path.join(data_dir, folder)
        if os.path.isdir(path):
            try:
                data.resolve_source(path)
            except data.DataError:
                continue
            return path
    for version_dir in _tfds_version_dirs(data_dir):
        name = f"nsynth-{split}.tfrecord-*"
        if any(os.path.isfile(f) for f in glob.glob(os.path.join(glob.escape(version_dir), name))):
            return os.path.join(version_dir, name)
    return None


def _tfds_version_dirs(data_dir: str) -> list[str]:
    """``nsynth/full/<version>`` folders of a TFDS data dir (also given as ``.../nsynth`` or ``.../nsynth/full``),
    newest version first."""
    def version(path):
        parts = os.path.basename(path).split(".")
        return tuple(int(p) for p in parts) if all(p.isdigit() for p in parts) else None
    found = []
    for sub in (os.path.join("nsynth", "full"), "full", ""):
        base = glob.escape(os.path.join(data_dir, sub) if sub else data_dir)
        found += [d for d in glob.glob(os.path.join(base, "*")) if os.path.isdir(d) and version(d) is not None]
    return sorted(found, key=version, reverse=True)


def evaluation_source(data_dir, sample_dir: str = SAMPLE_DIR) -> tuple[str, str]:
    """``(path, sentence)``: the test split in ``data_dir`` if there is one, else the embedded sample."""
    path = find_split(data_dir, "test")
    if path is not None:
        return path, f"the NSynth-format test split found at `{path}`"
    if not os.path.exists(sample_dir):
        raise data.DataError(f"No NSynth test split in {data_dir!r} and no embedded sample at {sample_dir!r}. "
                             "Set DATA_DIR to a folder holding nsynth-test.tfrecord (or the nsynth-test/ "
                             "JSON+wav folder), or restore data/ from project1.zip.")
    return sample_dir, (f"the small sample embedded in the repository (`{sample_dir}`), because "
                        f"`{data_dir}` holds no NSynth test split")


def training_splits(data_dir) -> tuple[str, str | None]:
    """``(train, valid)`` paths for ``MODE = "train"``; valid may be None (then no early stopping)."""
    train_path = find_split(data_dir, "train")
    if train_path is None:
        raise data.DataError(f"MODE='train' needs NSynth training data: {data_dir!r} holds no nsynth-train."
                             "tfrecord(.gz), nsynth-train.tfrecord-* / nsynth-train-*.tfrecord shards, nsynth-train/ "
                             "folder, train/ split or TFDS nsynth/full/<version>/.")
    return train_path, find_split(data_dir, "valid")


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


YARDSTICKS = {   # weights/evaluation_<key>.json -> what it measured (written by `make weights` and the tools)
    "corpus_test": "rendered corpus, test split (an unseen SoundFont family)",
    "real_nsynth": "real NSynth notes (../shared/nsynth-real)",
    "tonejs": "tonejs-instruments recordings (make evaluate-recordings)",
    "freepats": "freepats GUS patches (make evaluate-freepats)",
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
        row = {"evaluated on": YARDSTICKS[key]}
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
FIGURE_ALT = {   # figures/<name>.png -> alt text of the figure in the exported report
    "waveform_example": "Waveform of one string note: amplitude in [-1, 1] against time over 4 s, note-off at 3 s.",
    "learning_curves": "Learning curves of both networks: training and validation loss and accuracy per epoch, "
                       "best epoch marked.",
    "per_class_accuracy": "Bar chart of accuracy per instrument family for both networks.",
    "confusion_waveform": "Confusion matrix of the waveform CNN, note counts and row-normalised.",
    "confusion_logmel": "Confusion matrix of the log-mel CNN, note counts and row-normalised.",
    "extremes_waveform": "Per family, the waveforms the waveform CNN gives the highest and the lowest probability "
                         "of the correct family.",
    "extremes_logmel": "Per family, the waveforms the log-mel CNN gives the highest and the lowest probability "
                       "of the correct family.",
    "boundary_waveform": "Per family, the waveforms nearest the waveform CNN's decision boundary, just right and "
                         "just wrong, with their margins.",
    "boundary_logmel": "Per family, the waveforms nearest the log-mel CNN's decision boundary, just right and "
                       "just wrong, with their margins.",
}
PRINT_CSS = """<style>
@media print { @page { size: A4; margin: 12mm; } }
.jp-RenderedHTMLCommon table { font-size: 9px; }
.jp-OutputArea-output pre { white-space: pre-wrap; word-break: break-word; }
img { max-width: 100%; height: auto; }
</style>"""


def export_html(notebook: str = "project1.ipynb", out: str = os.path.join("report", "project1.html")) -> str:
    """The executed notebook as a report page: outputs only (no code cells, nothing cut off in print), every
    figure with alt text (:data:`FIGURE_ALT`, by the file name its cell saves it to), tables and text fit to the
    page width. Returns ``out``."""
    import html
    import re

    import nbformat
    from nbconvert import HTMLExporter
    nb = nbformat.read(notebook, as_version=4)
    alts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        saved = re.search(r"/(\w+)\.png", cell.source)
        alt = FIGURE_ALT.get(saved.group(1), "") if saved else ""
        alts += [alt or "A figure of the report."] * sum("image/png" in o.get("data", {}) for o in cell.outputs)
    body, _ = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                           exclude_output_prompt=True).from_notebook_node(nb)
    pieces = re.split(r'<img (?:alt="[^"]*" )?', body)       # nbconvert writes a placeholder alt text
    if len(pieces) - 1 != len(alts):
        raise data.DataError(f"{notebook}: {len(pieces) - 1} images in the page but {len(alts)} image outputs")
    body = pieces[0] + "".join(f'<img alt="{html.escape(alt)}" {rest}' for alt, rest in zip(alts, pieces[1:]))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write_text_atomic(out, body.replace("</head>", PRINT_CSS + "\n</head>", 1))
    return out

ZIP_CONTENT = ("project1.ipynb", "README.md", "requirements.txt", "nsynth_cnn", "weights", "data/README.md",
               "data/nsynth-sample", "figures", "report/project1.html", "report/project1.pdf")
ZIP_REQUIRED = ("project1.ipynb", "README.md", "requirements.txt", "nsynth_cnn",
                *(weights_path("weights", name) for name in MODEL_NAMES))


def package_zip(out: str = "project1.zip", root: str = ".", content=ZIP_CONTENT, required=ZIP_REQUIRED,
                folder: str = "project1") -> list[str]:
    """Write the deliverable zip (every file under ``folder/``) and return the names it holds.

    Refuses (``DataError``) when a required file is missing or the notebook has not been executed. Skips
    caches, hidden files (training backups, checkpoints) and temporary files; optional entries that do not
    exist (the PDF, say) are left out.
    """
    import zipfile
    import nbformat
    missing = [p for p in required if not os.path.exists(os.path.join(root, p))]
    if missing:
        raise data.DataError(f"cannot build {out}: missing {', '.join(missing)} (train the networks or "
                             "restore them).")
    nb = nbformat.read(os.path.join(root, "project1.ipynb"), as_version=4)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        raise data.DataError("project1.ipynb has no outputs: run it first (make notebook).")
    files = []
    for entry in content:
        path = os.path.join(root, entry)
        if os.path.isfile(path):
            files.append(entry)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
            rel = os.path.relpath(dirpath, root)
            files += [os.path.join(rel, f) for f in sorted(filenames)
                      if not f.startswith(".") and not f.endswith((".pyc", ".tmp")) and ".tmp." not in f]
    tmp = out + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in files:
            zf.write(os.path.join(root, f), os.path.join(folder, f))
    os.replace(tmp, out)
    return files
