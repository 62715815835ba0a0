"""Every figure of the report. Each function takes arrays, returns a matplotlib ``Figure`` and, given
``path``, saves it as PNG (folders are created).

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so nothing accumulates in pyplot's
global state; in Jupyter the returned figure displays inline as a cell's value. Waveforms are drawn with
``librosa.display.waveshow`` (time in seconds, amplitude in full-scale units where +-1 is 0 dBFS).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np
from matplotlib.figure import Figure

from .params import AUDIO, FAMILIES, WaveformParams
from .selection import Pick

MODEL_COLORS = {"waveform": "tab:blue", "logmel": "tab:orange"}
MODEL_TITLES = {"waveform": f"waveform CNN ({WaveformParams().target_rate_hz / 1000:g} kHz raw audio)",
                "logmel": "log-mel CNN"}
DPI = 110


def save(fig: Figure, path: str | os.PathLike | None) -> Figure:
    """Write ``fig`` as PNG to ``path`` (if given) and return it."""
    if path is not None:
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        fig.savefig(path, dpi=DPI, facecolor="white")
    return fig


def model_title(name: str) -> str:
    return MODEL_TITLES.get(name, f"{name} CNN")


# ----------------------------------------------------------------------------------------------- learning curves
def learning_curves(histories: Mapping[str, Mapping], path=None) -> Figure:
    """Loss and accuracy per epoch, training (solid) and validation (dashed), every network on shared axes.

    ``histories``: ``{model name: history dict}`` with per-epoch lists ``epoch`` (0-based, as Keras' CSV
    logger writes it), ``loss``, ``accuracy`` and optionally ``val_loss``, ``val_accuracy``, and the histories of
    the recipe stages that came before it (``earlier_stages``, oldest first): every stage is drawn, one after the
    other, with a dotted line where a stage starts. The epoch with the best validation accuracy of the last stage
    (the weights that are kept) is marked with a dot.
    """
    fig = Figure(figsize=(12, 5.0), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2, sharex=True)
    for name, h in histories.items():
        color = MODEL_COLORS.get(name)
        stages = [*h.get("earlier_stages", []), h]
        offset = 0
        for k, stage in enumerate(stages):
            epochs = offset + np.arange(1, len(stage.get("loss", [])) + 1)
            for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
                ax.plot(epochs, stage[key], "-", color=color, lw=1.8, label=f"{name}: training" if k == 0 else None)
                if stage.get(f"val_{key}"):
                    ax.plot(epochs, stage[f"val_{key}"], "--", color=color, lw=1.8,
                            label=f"{name}: validation" if k == 0 else None)
                if k > 0:
                    ax.axvline(offset + 0.5, color=color, ls=":", lw=1.2,
                               label=f"{name}: next recipe stage" if ax is ax_acc and k == 1 else None)
            offset += len(epochs)
        if h.get("val_accuracy"):
            best = int(np.nanargmax(h["val_accuracy"]))
            best_acc, best_epoch = h["val_accuracy"][best], offset - len(h["val_accuracy"]) + best + 1
            ax_acc.plot(best_epoch, best_acc, "o", color=color, ms=7, mec="black",
                        label=f"{name}: best validation ({best_acc:.3f}, epoch {best_epoch})")
    ax_loss.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if histories:
        fig.legend(*ax_acc.get_legend_handles_labels(), loc="outside lower center", ncols=len(histories),
                   fontsize=8.5)
    else:
        for ax in (ax_loss, ax_acc):
            _empty(ax, "no training history found")
    return save(fig, path)


# ----------------------------------------------------------------------------------------------- waveforms
def _librosa():
    """librosa with its display module; its lazy import of pooch -> tqdm.auto warns in Jupyter (silenced)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import librosa
        import librosa.display
        import librosa.util.files  # noqa: F401  (imports pooch, whose tqdm.auto warning we skip)
    return librosa


def note_name(pitch: int) -> str:
    return _librosa().midi_to_note(int(pitch), unicode=False)


def describe_note(meta: Mapping[str, np.ndarray], i: int) -> str:
    """``"flute (acoustic), pitch 60 = C4, velocity 100"`` for note ``i`` of an NSynth metadata dict."""
    fam = FAMILIES[int(meta["label"][i])] if "label" in meta else str(meta["instrument_family_str"][i])
    src = f" ({meta['instrument_source_str'][i]})" if "instrument_source_str" in meta else ""
    pitch = int(meta["pitch"][i])
    return f"{fam}{src}, pitch {pitch} = {note_name(pitch)}, velocity {int(meta['velocity'][i])}"


def draw_waveform(ax, audio: np.ndarray, sr: int = AUDIO.sample_rate_hz, full_scale: bool = True,
                  color: str = "tab:blue", max_points: int = 4000) -> None:
    """One waveform on ``ax``: time in seconds; y-limits +-1 (``full_scale``) or fitted to the peak.

    A dotted line marks the note-off (NSynth notes are held 3 s, then released). ``max_points``: waveshow
    draws the min/max envelope at this many points (a 4 s note is 64,000 samples; ~4,000 is plenty for a
    panel a few inches wide and keeps drawing 40 panels fast).
    """
    librosa = _librosa()
    audio = np.asarray(audio, np.float32)
    librosa.display.waveshow(audio, sr=sr, ax=ax, axis="s", color=color, linewidth=0.6, max_points=max_points)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    lim = 1.0 if full_scale else _nice_limit(peak)
    ax.set_ylim(-lim * 1.05, lim * 1.05)
    ax.set_xlim(0, len(audio) / sr)
    ax.axvline(AUDIO.held_seconds, color="0.4", ls=":", lw=1)
    ax.axhline(0, color="0.6", lw=0.5)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("amplitude")
    ax.tick_params(labelsize=8)


def _nice_limit(peak: float) -> float:
    """Smallest of 1, 0.5, 0.2, 0.1, 0.05, ... that is >= ``peak`` (so the y-axis reads well)."""
    lim = 1.0
    for step in (0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001):
        if peak > step:
            break
        lim = step
    return lim


def waveform(audio: np.ndarray, title: str = "", sr: int = AUDIO.sample_rate_hz, path=None) -> Figure:
    """A single note's waveform, amplitude on the full [-1, 1] scale against time in seconds."""
    fig = Figure(figsize=(10, 3.4), layout="constrained")
    ax = fig.subplots()
    draw_waveform(ax, audio, sr, full_scale=True)
    peak = float(np.max(np.abs(audio)))
    ax.set_title(title, fontsize=11)
    ax.text(0.995, 0.03, f"peak {peak:.2f} ({20 * np.log10(max(peak, 1e-9)):.0f} dBFS) · dotted line: note-off "
            f"at {AUDIO.held_seconds:g} s", transform=ax.transAxes, ha="right", va="bottom", fontsize=8,
            color="0.3")
    return save(fig, path)


# ----------------------------------------------------------------------------------------------- selected examples
EXTREME_SLOTS = {"highest": "highest p(correct class)", "lowest": "lowest p(correct class)"}
BOUNDARY_SLOTS = {"above": "just above the boundary (correct)", "below": "just below the boundary (wrong)"}


def _empty(ax, message: str) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_color("0.8")
    ax.text(0.5, 0.5, message, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.35",
            style="italic")


def _fmt_margin(m: float) -> str:
    return f"{m:+.3f}" if abs(m) >= 0.001 else f"{m:+.1e}"


def _pick_title(slot: str, p: Pick, classes) -> str:
    true, rival = classes[p.label], classes[p.rival]
    if slot in ("highest", "lowest"):
        if p.correct:
            return f"p({true}) = {p.p_true:.2f} · correct (next: {rival} {p.p_rival:.2f})"
        return f"p({true}) = {p.p_true:.2f} · predicted {rival} ({p.p_rival:.2f})"
    return f"margin {_fmt_margin(p.margin)} · p({true}) {p.p_true:.3f} vs {rival} {p.p_rival:.3f}"


def _missing_reason(slot: str, family: str, count: int) -> str:
    if count == 0:
        return f"no {family} notes in this data"
    if slot == "lowest":
        return f"only one {family} note (shown left)"
    if slot == "above":
        return f"no {family} note classified correctly"
    if slot == "below":
        return f"no {family} note misclassified"
    return f"no {family} note for this panel"


def examples_grid(audio: np.ndarray, labels: np.ndarray, picks: Mapping[int, Mapping[str, Pick | None]],
                  slots: Mapping[str, str], suptitle: str, meta: Mapping[str, np.ndarray] | None = None,
                  classes=FAMILIES, sr: int = AUDIO.sample_rate_hz, path=None) -> Figure:
    """One row per class, one column per selection slot; each panel a waveform titled with its numbers.

    ``picks`` comes from :func:`nsynth_cnn.selection.extremes` or :func:`~nsynth_cnn.selection.near_boundary`;
    ``slots`` maps its slot keys to column headings. A slot with no pick shows why instead of a waveform.
    Y-limits fit each note's peak (the axis ticks give the scale), so quiet notes stay readable.
    The layout is fixed in inches (not constrained layout), which draws this 20-panel figure twice as fast.
    """
    from matplotlib.ticker import MaxNLocator, MultipleLocator
    labels = np.asarray(labels)
    rows = sorted(picks)
    panel_w, panel_h, gap_h, top, bottom, left = 5.6, 1.25, 0.62, 1.05, 0.65, 1.15
    width = left + len(slots) * panel_w + (len(slots) - 1) * 0.55 + 0.25
    height = top + bottom + len(rows) * panel_h + (len(rows) - 1) * gap_h
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=left / width, right=1 - 0.25 / width, bottom=bottom / height, top=1 - top / height,
                        hspace=gap_h / panel_h, wspace=0.55 / panel_w)
    axes = fig.subplots(len(rows), len(slots), squeeze=False)
    fig.suptitle(suptitle, fontsize=13, fontweight="bold", y=1 - 0.2 / height, va="top")
    fig.text(0.01, 0.1 / height, "y-axes: amplitude (1 = full scale), fitted to each note's peak; "
             f"dotted line: note-off at {AUDIO.held_seconds:g} s", fontsize=8, color="0.35")
    for r, c in enumerate(rows):
        count = int((labels == c).sum())
        for k, (slot, heading) in enumerate(slots.items()):
            ax = axes[r, k]
            p = picks[c][slot]
            if p is None:
                _empty(ax, _missing_reason(slot, classes[c], count))
            else:
                draw_waveform(ax, audio[p.index], sr, full_scale=False,
                              color="tab:green" if p.correct else "tab:red")
                ax.xaxis.set_major_locator(MultipleLocator(0.5))
                ax.yaxis.set_major_locator(MaxNLocator(4, symmetric=True))
                ax.set_title(_pick_title(slot, p, classes), fontsize=8.5, loc="left")
                if meta is not None and "note_str" in meta:
                    ax.set_title(str(meta["note_str"][p.index]), fontsize=7, loc="right", color="0.35")
            if r < len(rows) - 1:
                ax.set_xlabel("")
            ax.set_ylabel(f"{classes[c]}\n(n={count})" if k == 0 else "", fontsize=10,
                          fontweight="bold" if k == 0 else "normal")
            if r == 0:
                ax.annotate(heading, xy=(0.5, 1.0), xytext=(0, 20), xycoords="axes fraction",
                            textcoords="offset points", ha="center", va="bottom", fontsize=11,
                            fontweight="bold")
    return save(fig, path)


def extremes_figure(audio, labels, picks, model: str, meta=None, path=None) -> Figure:
    """Figure 3: per class, the note with the highest and the one with the lowest correct-class probability."""
    return examples_grid(audio, labels, picks, EXTREME_SLOTS,
                         f"{model_title(model)}: most and least confident note of each family "
                         "(green = correct, red = wrong)", meta, path=path)


def boundary_figure(audio, labels, picks, model: str, meta=None, path=None) -> Figure:
    """Figure 4: per class, the notes just above and just below the decision boundary (margin shown)."""
    return examples_grid(audio, labels, picks, BOUNDARY_SLOTS,
                         f"{model_title(model)}: notes nearest the decision boundary, "
                         "margin = p(true) - max p(other)", meta, path=path)


# ----------------------------------------------------------------------------------------------- confusion matrix
def confusion(cm: np.ndarray, model: str, classes=FAMILIES, path=None) -> Figure:
    """Figure 5: confusion matrix as counts (left) and row-normalised (right); rows = true family.

    A family with no notes has an empty row in the normalised matrix (nothing to divide by).
    """
    import seaborn as sns
    cm = np.asarray(cm)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support[:, None] > 0, cm / support[:, None], np.nan)
    fig = Figure(figsize=(16, 6.8), layout="constrained")
    ax_n, ax_r = fig.subplots(1, 2)
    ylabels = [f"{c} (n={n})" for c, n in zip(classes, support)]
    sns.heatmap(cm, ax=ax_n, annot=True, fmt="d", cmap="Blues", cbar=True, square=True, linewidths=0.5,
                linecolor="0.9", xticklabels=classes, yticklabels=ylabels, annot_kws={"fontsize": 8},
                cbar_kws={"label": "notes", "shrink": 0.8})
    sns.heatmap(norm, ax=ax_r, annot=True, fmt=".2f", cmap="Blues", vmin=0, vmax=1, cbar=True, square=True,
                linewidths=0.5, linecolor="0.9", xticklabels=classes, yticklabels=ylabels,
                annot_kws={"fontsize": 8}, cbar_kws={"label": "fraction of the true family", "shrink": 0.8})
    for ax, title in ((ax_n, "counts"), (ax_r, "row-normalised (recall on the diagonal)")):
        ax.set_title(title, fontsize=11)
        ax.set_xlabel("predicted family")
        ax.set_ylabel("true family")
        ax.tick_params(axis="x", labelrotation=45, labelsize=9)
        ax.tick_params(axis="y", labelrotation=0, labelsize=9)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
    acc = np.trace(cm) / max(cm.sum(), 1)
    fig.suptitle(f"{model_title(model)}: confusion matrix on {int(cm.sum())} notes (accuracy {acc:.3f})",
                 fontsize=13, fontweight="bold")
    return save(fig, path)


# ----------------------------------------------------------------------------------------------- summary
def per_class_accuracy(results: Mapping[str, Mapping], classes=FAMILIES, path=None) -> Figure:
    """Recall per family for each network side by side (``results``: ``{model: evaluate.metrics(...)}``)."""
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(classes))
    width = 0.8 / max(len(results), 1)
    for j, (name, res) in enumerate(results.items()):
        vals = [res["per_class_accuracy"].get(c) for c in classes]
        ys = [np.nan if v is None else v for v in vals]
        bars = ax.bar(x + (j - (len(results) - 1) / 2) * width, ys, width, color=MODEL_COLORS.get(name),
                      label=f"{name} (accuracy {res['accuracy']:.3f}, balanced {res['balanced_accuracy']:.3f})")
        ax.bar_label(bars, labels=["-" if v is None else f"{v:.2f}" for v in vals], fontsize=7, padding=1)
    ax.set_xticks(x, classes)
    ax.set(ylim=(0, 1.08), ylabel="accuracy (recall)", title="Per-family accuracy on the evaluation data")
    ax.grid(axis="y", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=len(results), fontsize=9)
    return save(fig, path)
