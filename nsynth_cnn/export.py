"""The deliverables made from the executed notebook: its HTML/PDF export (outputs only, alt text on every figure)
and ``project1.zip`` (``make report zip``). Nothing here computes results; :mod:`nsynth_cnn.report` makes the tables
and prose the notebook shows.
"""
from __future__ import annotations

import os

from .atomic import write_text_atomic
from .params import MODEL_NAMES
from .schema import DataError
from .weights import weights_path


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
        raise DataError(f"{notebook}: {len(pieces) - 1} images in the page but {len(alts)} image outputs")
    body = pieces[0] + "".join(f'<img alt="{html.escape(alt)}" {rest}' for alt, rest in zip(alts, pieces[1:]))
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    write_text_atomic(out, body.replace("</head>", PRINT_CSS + "\n</head>", 1))
    return out

ZIP_CONTENT = ("project1.ipynb", "README.md", "requirements.txt", "pyproject.toml", "nsynth_cnn", "weights",
               "data/README.md", "data/nsynth-sample", "figures", "report/project1.html", "report/project1.pdf",
               # what README.md points to, so that the zipped README is right for what the zip holds
               "docs", "tests", "Makefile", ".ci/run", ".ci/requirements-lock.txt")
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
        raise DataError(f"cannot build {out}: missing {', '.join(missing)} (train the networks or "
                             "restore them).")
    nb = nbformat.read(os.path.join(root, "project1.ipynb"), as_version=4)
    if not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"):
        raise DataError("project1.ipynb has no outputs: run it first (make notebook).")
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
