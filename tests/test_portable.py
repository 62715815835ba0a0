"""Where the users are (issue 27): installs that keep an installed TensorFlow, train mode that picks NSynth's split
files by name and never writes the shipped weights, float32 saved networks, the device printed before training."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, make_notes
from nsynth_cnn import bootstrap, splits, train, writers
from nsynth_cnn.schema import DataError

TINY_RUN = ["--model", "logmel", "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "4",
            "--shuffle-buffer", "16", "--xla", "off"]


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def official_dir(tmp_path_factory) -> Path:
    """NSynth's three split files side by side, the test file corrupt (so reading it at all would fail)."""
    folder = tmp_path_factory.mktemp("nsynth")
    notes = make_notes()
    writers.write_tfrecord(str(folder / "nsynth-train.tfrecord"), notes)
    writers.write_tfrecord(str(folder / "nsynth-valid.tfrecord"), notes[1::2])
    (folder / "nsynth-test.tfrecord").write_bytes(b"\x00garbage, not a TFRecord" * 50)
    return folder


# ----------------------------------------------------------------------------------------------- split selection
def test_select_split_takes_the_named_split_files(official_dir):
    assert splits.select_split(official_dir, "train") == str(official_dir / "nsynth-train.tfrecord")
    assert splits.select_split(official_dir, "valid") == str(official_dir / "nsynth-valid.tfrecord")
    with pytest.raises(ValueError):
        splits.select_split(official_dir, "test")                       # never trained on


def test_select_split_refuses_the_test_split_and_ambiguous_folders(official_dir, tmp_path):
    with pytest.raises(DataError, match="test split is never trained"):
        splits.select_split(official_dir / "nsynth-test.tfrecord", "train")
    with pytest.raises(DataError, match="test split is never trained"):
        splits.select_split(str(official_dir / "nsynth-te*"), "valid")
    shutil.copy(official_dir / "nsynth-train.tfrecord", tmp_path / "nsynth-train.tfrecord")
    shutil.copy(official_dir / "nsynth-train.tfrecord", tmp_path / "my-notes.tfrecord")
    with pytest.raises(DataError, match="named for no split.*my-notes"):
        splits.select_split(tmp_path, "train")
    with pytest.raises(DataError, match="no nsynth-valid"):
        splits.select_split(_only(tmp_path / "only-train", official_dir / "nsynth-train.tfrecord"), "valid")


def test_select_split_keeps_unnamed_sources_and_finds_split_folders(tmp_path, official_dir):
    shards = tmp_path / "shards"                                         # e.g. prepared or hand-made shards
    shards.mkdir()
    shutil.copy(official_dir / "nsynth-train.tfrecord", shards / "part-0.tfrecord")
    assert splits.select_split(shards, "train") == str(shards)
    corpus = tmp_path / "corpus"                                         # this project's corpus: train/ valid/
    _only(corpus / "train", official_dir / "nsynth-train.tfrecord")
    assert splits.select_split(corpus, "train") == str(corpus / "train")
    with pytest.raises(DataError, match="no NSynth valid split"):
        splits.select_split(corpus, "valid")


def _only(folder: Path, src: Path) -> Path:
    folder.mkdir(parents=True)
    shutil.copy(src, folder / src.name)
    return folder


def test_run_recipe_defaults_to_a_new_folder():
    import inspect
    assert inspect.signature(train.run_recipe).parameters["out_dir"].default == os.path.join("runs", "weights")


# ----------------------------------------------------------------------------------------------- training runs
@pytest.mark.slow
def test_official_folder_trains_on_the_train_split_only(official_dir, tmp_path, capsys):
    """``train --train DIR`` with the three official files side by side: the train file is trained on, the valid file
    validates, and the (corrupt) test file is never opened."""
    from nsynth_cnn.__main__ import main
    out = tmp_path / "w"
    rc = main(["train", "--train", str(official_dir), "--out", str(out), *TINY_RUN])
    printed = capsys.readouterr()
    assert rc == 0, printed.err[-2000:]
    meta = json.loads((out / "logmel_cnn_history.json").read_text())["meta"]
    assert meta["train_data"] == str(official_dir / "nsynth-train.tfrecord")
    assert meta["valid_data"] == str(official_dir / "nsynth-valid.tfrecord")
    assert sum(meta["train_notes_per_family"].values()) == 20            # 22 notes, synth_lead dropped
    assert "training on the CPU" in printed.out and "nsynth-test" not in printed.out + printed.err


@pytest.mark.slow
def test_train_without_out_leaves_the_shipped_weights_byte_identical(official_dir, tmp_path, monkeypatch):
    from nsynth_cnn.__main__ import main
    shutil.copytree(ROOT / "weights", tmp_path / "weights")
    before = digests(tmp_path / "weights")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--train", str(official_dir), *TINY_RUN]) == 0
    assert digests(tmp_path / "weights") == before
    assert (tmp_path / "runs" / "weights" / "logmel_cnn.keras").is_file()


@pytest.mark.slow
def test_a_network_trained_under_mixed_precision_is_saved_float32(tmp_path):
    import keras

    from nsynth_cnn.params import TrainParams
    train_file = tmp_path / "nsynth-train.tfrecord"
    writers.write_tfrecord(str(train_file), make_notes())
    p = TrainParams(batch_size=4, epochs=1, shuffle_buffer=16)
    train.fit_network("logmel", str(train_file), None, str(tmp_path / "w"), p,
                      run=train.RunOptions(steps_per_epoch=1, mixed_precision=True, xla=False, verbose=0))
    history = json.loads((tmp_path / "w" / "logmel_cnn_history.json").read_text())
    assert history["meta"]["mixed_precision"] is True
    assert keras.config.dtype_policy().name == "float32"                  # the process's policy is restored
    model = keras.models.load_model(tmp_path / "w" / "logmel_cnn.keras", compile=False)
    policies = {layer.dtype_policy.name for layer in model.layers}
    assert policies == {"float32"}, policies
    assert {w.dtype for w in model.get_weights()} == {np.dtype("float32")}


# ----------------------------------------------------------------------------------------------- device and time
def test_device_summary_names_the_cpu_and_estimates_the_time(official_dir):
    from nsynth_cnn.params import RECIPE
    text = train.device_summary(str(official_dir / "nsynth-train.tfrecord"), RECIPE, epochs=None)
    assert text.startswith("training on the CPU") and f"{os.cpu_count()} cores" in text
    assert "29 epochs of ~22 notes" in text and "min" in text
    assert "about" not in train.device_summary()                          # no data: no estimate


# ----------------------------------------------------------------------------------------------- installs
def test_bootstrap_never_touches_an_installed_tensorflow():
    reqs = [("tensorflow", ">=2.16,<2.22"), ("keras", ">=3.10,<4"), ("librosa", ">=0.10.2")]
    colab = {"tensorflow": "2.19.0", "keras": "3.8.0"}.get                # Colab-like: GPU TF, older keras
    todo, notes = bootstrap.missing(reqs, colab)
    assert todo == ["keras>=3.10,<4", "librosa>=0.10.2"] and not notes
    cpu = {"tensorflow-cpu": "2.21.0", "keras": "3.15.1", "librosa": "0.11.0"}.get
    assert bootstrap.missing(reqs, cpu) == ([], [])
    old = {"tensorflow": "2.12.0", "keras": "3.15.1", "librosa": "0.11.0"}.get
    todo, notes = bootstrap.missing(reqs, old)
    assert todo == [] and "keeping the installed tensorflow 2.12.0" in notes[0]
    assert bootstrap.missing(reqs, lambda name: None)[0][0] == "tensorflow>=2.16,<2.22"


def test_requirements_ranges_hold_the_ci_lock():
    """Every runtime and dev requirement is in the CI lock at a version inside its range (tensorflow-cpu stands in
    for tensorflow there), so the tested lock is one of the installs the ranges allow."""
    from packaging.requirements import Requirement
    try:
        import tomllib
    except ImportError:                       # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    lock = {}
    for line in (ROOT / ".ci" / "requirements-lock.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            lock[name.strip().lower().replace("_", "-")] = version.strip()
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    wanted = [f"{n}{s}" for n, s in bootstrap.requirements(str(ROOT / "requirements.txt"))] + dev
    for text in wanted:
        req = Requirement(text)
        name = req.name.lower().replace("_", "-")
        version = lock.get(name) or (lock.get("tensorflow-cpu") if name == "tensorflow" else None)
        assert version is not None, f"{req.name} is not in .ci/requirements-lock.txt"
        assert req.specifier.contains(version, prereleases=True), f"lock has {req.name}=={version}, outside {req.specifier}"


def test_too_old_keras_gets_the_upgrade_command(monkeypatch):
    """Keras 3.10-3.14 cannot read files saved by 3.15 (new initializer config keys): the error says what to run."""
    import keras

    from nsynth_cnn import weights

    def fail(*args, **kwargs):
        raise TypeError("GlorotUniform.__init__() got an unexpected keyword argument 'input_axes'")
    monkeypatch.setattr(keras, "__version__", "3.12.0")
    monkeypatch.setattr(keras.models, "load_model", fail)
    with pytest.raises(weights.WeightsError, match=r"Keras 3\.12\.0.*pip install -U \"keras>=3\.15,<4\""):
        weights.load_trained("logmel", str(ROOT / "weights"))
