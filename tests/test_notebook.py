"""The report notebook: its structure, and a full run in ``evaluate`` mode that must draw every figure.

The run uses the embedded sample ``data/nsynth-sample`` when it exists (else generated notes) and the real
``weights/`` when both networks are there (else untrained stand-ins saved in a temporary folder), so it passes
with or without trained weights. Figures go to a temporary folder, never to ``figures/``.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, make_notes

NOTEBOOK = ROOT / "project1.ipynb"
SAMPLE = ROOT / "data" / "nsynth-sample"
FIGURES = ("learning_curves", "waveform_example", "per_class_accuracy",
           "extremes_waveform", "extremes_logmel", "boundary_waveform", "boundary_logmel",
           "confusion_waveform", "confusion_logmel")
SECTIONS = ("Overview", "Data", "Architectures", "Training", "Results", "Discussion", "References")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails unless the file is a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    assert head[12:16] == b"IHDR", f"{path.name}: PNG without IHDR"
    return struct.unpack(">II", head[16:24])


# ----------------------------------------------------------------------------------------------- structure
@pytest.fixture(scope="module")
def notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_first_code_cell_is_the_parameters_cell(notebook):
    first = next(c for c in notebook.cells if c.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", [])
    names = {}
    exec(first.source, {}, names)          # plain assignments only
    assert names["MODE"] == "evaluate"
    assert set(names) == {"MODE", "DATA_DIR", "WEIGHTS_DIR", "OUT_DIR", "EPOCHS"} and names["EPOCHS"] == 0
    import papermill                       # papermill parses every line (a quote in a comment once broke one)
    import ast
    assert {k: ast.literal_eval(v["default"]) for k, v in papermill.inspect_notebook(str(NOTEBOOK)).items()} == names


def test_reads_like_a_report(notebook):
    headings = [line.lstrip("#").strip() for c in notebook.cells if c.cell_type == "markdown"
                for line in c.source.splitlines() if line.startswith("## ")]
    for section in SECTIONS:
        assert section in headings, f"no '## {section}' section"
    assert [h for h in headings if h in SECTIONS] == list(SECTIONS), "sections out of order"


def test_code_cells_only_call_the_package(notebook):
    for c in notebook.cells:
        if c.cell_type == "code":
            assert not any(line.lstrip().startswith(("def ", "class ")) for line in c.source.splitlines()), \
                f"logic belongs in nsynth_cnn, not in a cell:\n{c.source}"
            assert sum(1 for line in c.source.splitlines() if line.strip()) <= 12, f"cell too long:\n{c.source}"


def test_every_figure_is_saved_by_the_notebook(notebook):
    source = "\n".join(c.source for c in notebook.cells if c.cell_type == "code")
    for name in FIGURES:
        assert f"/{name}.png" in source, f"figure {name}.png is not produced by the notebook"


# ----------------------------------------------------------------------------------------------- full run
@pytest.fixture(scope="module")
def eval_data_dir(tmp_path_factory) -> str:
    """``data`` (the notebook then falls back to the embedded sample) or generated notes in JSON+wav."""
    if (SAMPLE / "examples.json").is_file():
        return "data"
    from nsynth_cnn import writers
    folder = tmp_path_factory.mktemp("sample") / "nsynth-test"
    writers.write_jsonwav(str(folder), make_notes(per_family=2))
    return str(folder)


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory) -> str:
    """The real ``weights/`` when both networks are there, else untrained stand-ins + a 3-epoch history."""
    real = ROOT / "weights"
    if all((real / f"{n}_cnn.keras").is_file() for n in ("waveform", "logmel")):
        return str(real)
    from nsynth_cnn import models
    out = tmp_path_factory.mktemp("weights")
    for i, name in enumerate(models.MODEL_NAMES):
        models.build_model(name).save(out / f"{name}_cnn.keras")
        history = {"epoch": [0, 1, 2], "loss": [2.2, 1.7, 1.4 + i / 10], "accuracy": [0.2, 0.4, 0.5],
                   "val_loss": [2.1, 1.8, 1.7], "val_accuracy": [0.25, 0.35, 0.4 - i / 20],
                   "learning_rate": [1e-3, 2e-3, 1e-3],
                   "meta": {"model": name, "train_data": "stand-in (untrained test model)",
                            "valid_data": "none", "wall_seconds_last_run": 0.0, "gpu": False}}
        (out / f"{name}_cnn_history.json").write_text(json.dumps(history))
    return str(out)


@pytest.fixture(scope="module")
def executed(tmp_path_factory, eval_data_dir, weights_dir):
    import papermill
    out = tmp_path_factory.mktemp("notebook")
    figures = out / "figures"
    nb = papermill.execute_notebook(
        str(NOTEBOOK), str(out / "project1.ipynb"), cwd=str(ROOT), kernel_name="python3",
        parameters={"MODE": "evaluate", "DATA_DIR": eval_data_dir, "WEIGHTS_DIR": weights_dir, "OUT_DIR": str(out)},
        progress_bar=False, execution_timeout=600)
    return nb, figures


@pytest.mark.slow
def test_notebook_runs_in_evaluate_mode(executed):
    nb, _ = executed
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    images = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                 if "image/png" in o.get("data", {}))
    assert images >= len(FIGURES), f"only {images} figures shown inline"
    text = "\n".join(o.get("text", "") if "text" in o else str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "This run evaluates on" in text


@pytest.mark.slow
def test_every_figure_is_a_real_png(executed):
    _, figures = executed
    for name in FIGURES:
        path = figures / f"{name}.png"
        assert path.is_file(), f"{name}.png not written"
        width, height = png_size(path)
        assert 400 <= width <= 4000 and 250 <= height <= 4000, f"{name}.png is {width}x{height}"
        assert path.stat().st_size > 10_000, f"{name}.png is suspiciously small"


# ----------------------------------------------------------------------------------------------- data location
def test_find_split_layouts(tmp_path, jsonwav_dir, tfrecord_file):
    from nsynth_cnn import splits
    from nsynth_cnn.schema import DataError
    assert splits.find_split(tmp_path / "missing", "test") is None
    assert splits.find_split(tmp_path, "test") is None
    (tmp_path / "nsynth-test.tfrecord").write_bytes(tfrecord_file.read_bytes())
    assert splits.find_split(tmp_path, "test") == str(tmp_path / "nsynth-test.tfrecord")
    os.symlink(jsonwav_dir, tmp_path / "nsynth-valid")                     # official JSON+wav folder name
    assert splits.find_split(tmp_path, "valid") == str(tmp_path / "nsynth-valid")
    assert splits.find_split(jsonwav_dir, "test") == str(jsonwav_dir)      # a JSON+wav folder is the test set
    assert splits.find_split(jsonwav_dir, "train") is None
    # the sample stands in only for the default DATA_DIR; a folder the user named must exist and hold a test split
    path, sentence = splits.evaluation_source(tmp_path / "nothing-here", sample_dir=str(jsonwav_dir),
                                              default_dir=str(tmp_path / "nothing-here"))
    assert path == str(jsonwav_dir) and "sample" in sentence
    with pytest.raises(DataError, match="does not exist.*DATA_DIR"):
        splits.evaluation_source(tmp_path / "typo", sample_dir=str(jsonwav_dir))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no NSynth test split"):
        splits.evaluation_source(tmp_path / "empty", sample_dir=str(jsonwav_dir))
    with pytest.raises(DataError):
        splits.training_splits(tmp_path)                                    # no train split


def test_training_meta_table_says_how_each_network_was_started():
    """A fine-tuned or distilled network (``train --init-from/--teacher``) says so in the notebook's table."""
    from nsynth_cnn import report
    base = {"epoch": [0, 1], "val_accuracy": [0.5, 0.6], "epoch_seconds": [10.0, 12.5]}
    table = report.training_meta_table({
        "waveform": {**base, "meta": {"train_data": "c/train", "init_from": "runs/base", "teacher": "weights"}},
        "logmel": {**base, "meta": {"train_data": "c/train", "init_from": None, "teacher": None}}})
    assert table.loc["waveform", "started from"] == "runs/base" and table.loc["waveform", "teacher"] == "weights"
    assert table.loc["logmel", "started from"] == "random weights" and table.loc["logmel", "teacher"] == "-"
    assert table.loc["logmel", "epochs run"] == 2 and table.loc["logmel", "training wall time (s)"] == 22.5
    assert table.loc["logmel", "best val accuracy"] == 0.6


# ----------------------------------------------------------------------------------------------- make zip
def test_package_zip_contents_and_refusals(tmp_path):
    import zipfile

    from nsynth_cnn import export
    from nsynth_cnn.schema import DataError
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    nbformat.write(nb, tmp_path / "project1.ipynb")
    for f in ("README.md", "requirements.txt", "nsynth_cnn/__init__.py", "nsynth_cnn/__pycache__/x.pyc",
              "weights/waveform_cnn.keras", "weights/waveform_cnn_history.json", "weights/.logmel.backup/ckpt",
              "data/nsynth-sample/examples.json", "figures/learning_curves.png"):
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f).write_text("x")
    out = str(tmp_path / "project1.zip")
    with pytest.raises(DataError, match="logmel_cnn.keras"):
        export.package_zip(out, root=str(tmp_path))                       # a network is missing
    (tmp_path / "weights" / "logmel_cnn.keras").write_text("x")
    with pytest.raises(DataError, match="no outputs"):
        export.package_zip(out, root=str(tmp_path))                       # notebook not executed
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    nbformat.write(nb, tmp_path / "project1.ipynb")
    export.package_zip(out, root=str(tmp_path))
    names = set(zipfile.ZipFile(out).namelist())
    assert {"project1/project1.ipynb", "project1/README.md", "project1/requirements.txt",
            "project1/nsynth_cnn/__init__.py", "project1/weights/waveform_cnn.keras",
            "project1/weights/logmel_cnn.keras", "project1/weights/waveform_cnn_history.json",
            "project1/data/nsynth-sample/examples.json", "project1/figures/learning_curves.png"} <= names
    assert not any("__pycache__" in n or "/." in n for n in names)


def test_the_zipped_readme_names_only_what_the_zip_holds(tmp_path):
    """Every file or folder README.md links to or names in backticks that exists in the checkout is in
    project1.zip too, so a grader's README is right for the zip."""
    import re
    import zipfile

    from nsynth_cnn import export
    if not any(c.get("outputs") for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"):
        pytest.skip("project1.ipynb is not executed (make notebook)")
    out = tmp_path / "project1.zip"
    export.package_zip(str(out), root=str(ROOT))
    names = set(zipfile.ZipFile(out).namelist())
    readme = (ROOT / "README.md").read_text()
    mentioned = set(re.findall(r"\]\((?!https?:)([^)#\s]+)\)", readme))
    mentioned |= {t.rstrip("/") for t in re.findall(r"`([\w./-]+)`", readme)
                  if not t.startswith(("../", "project1.zip", "runs", "report"))       # beside it, or outputs
                  and (ROOT / t.rstrip("/")).exists()}
    assert mentioned, "README.md names no file?"
    for path in sorted(mentioned):
        inside = f"project1/{path}"
        assert inside in names or any(n.startswith(inside + "/") for n in names), f"README.md names {path}, not zipped"


@pytest.mark.slow
def test_a_mistyped_data_dir_stops_the_notebook_and_writes_nothing(tmp_path):
    """``-p DATA_DIR /nonexistent``: the run fails with the one clear message (no silent fallback to the sample)
    and writes no tracked file (its figures would go to OUT_DIR, never figures/)."""
    import papermill
    before = {p.name: p.stat().st_mtime_ns for p in (ROOT / "figures").iterdir()}
    with pytest.raises(papermill.PapermillExecutionError) as err:
        papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "out.ipynb"), cwd=str(ROOT), kernel_name="python3",
                                   parameters={"DATA_DIR": str(tmp_path / "nonexistent")}, progress_bar=False,
                                   execution_timeout=300)
    assert err.value.ename == "DataError" and "does not exist" in err.value.evalue and "DATA_DIR" in err.value.evalue
    assert {p.name: p.stat().st_mtime_ns for p in (ROOT / "figures").iterdir()} == before
