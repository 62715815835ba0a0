"""``python -m nsynth_cnn train / evaluate / predict`` end to end on tiny generated data.

The logmel network is trained once (2 epochs x 2 steps of 4 notes) in a subprocess, exactly as a user runs
it (fresh interpreter, ``python -m nsynth_cnn``); evaluate and predict then use the file it wrote, called
in-process through ``__main__.main`` (the same argument parsing and code, without paying TensorFlow's start-up
again on a 2-core machine).
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from conftest import N, ROOT, make_notes, run_cli, train_valid_dir
from nsynth_cnn import data
from nsynth_cnn.__main__ import main
from nsynth_cnn.params import FAMILIES
from nsynth_cnn.audio import load_audio

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.slow]   # CLI subprocesses, training


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return train_valid_dir(tmp_path_factory.mktemp("cli"))


@pytest.fixture(scope="module")
def trained(workdir):
    out = workdir / "weights"
    proc = run_cli("train", "--model", "logmel", "--train", workdir / "train.tfrecord", "--valid",
                   workdir / "valid", "--out", out, "--epochs", 2, "--steps-per-epoch", 2, "--batch-size", 4,
                   "--shuffle-buffer", 32, "--xla", "off", "--watch", workdir / "valid",
                   timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return out, proc


def test_train_writes_model_and_history(trained):
    import keras
    out, proc = trained
    assert (out / "logmel_cnn.keras").is_file()
    assert "saved" in proc.stdout and "logmel_cnn.keras" in proc.stdout
    hist = json.loads((out / "logmel_cnn_history.json").read_text())
    assert hist["epoch"] == [0, 1]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert len(hist[key]) == 2 and all(np.isfinite(hist[key])), key
    assert all(0.0 <= a <= 1.0 for a in hist["val_accuracy"])
    # --watch: accuracy on an extra labelled set per epoch: 10 notes (the 11th is synth_lead), so k/10
    assert len(hist["watch_accuracy"]) == 2
    assert all(abs(a * 10 - round(a * 10)) < 1e-6 and 0 <= a <= 1 for a in hist["watch_accuracy"])
    # each epoch's wall time, so a resumed run's total is still the sum; it covers at least the watch pass
    assert len(hist["epoch_seconds"]) == 2 and all(s > 0 for s in hist["epoch_seconds"])
    assert sum(hist["epoch_seconds"]) <= hist["meta"]["wall_seconds_last_run"] + 1.0
    # the recipe's log-mel stage, with the command line's batch size, and the mixing diagnostic
    from nsynth_cnn.params import RECIPE
    assert hist["meta"]["model"] == "logmel" and hist["meta"]["params"]["batch_size"] == 4
    assert hist["meta"]["stage"]["model"] == "logmel" and hist["meta"]["stage"]["epochs"] == RECIPE[0].epochs
    assert 1.0 <= hist["meta"]["families_per_batch"] <= 4.0          # batches of 4 notes
    assert sum(hist["meta"]["train_notes_per_family"].values()) == 20  # 22 notes, 2 of them synth_lead
    assert not list(out.glob(".logmel_cnn*")), "checkpoint/backup leftovers after a finished run"
    model = keras.models.load_model(out / "logmel_cnn.keras")
    assert tuple(model.input_shape) == (None, N) and tuple(model.output_shape) == (None, 10)


def test_evaluate_prints_count_accuracy_and_writes_json(trained, workdir, capsys):
    import keras
    out, _ = trained
    report = workdir / "eval.json"
    rc = main(["evaluate", "--model", "logmel", "--data", str(workdir / "train.tfrecord"), "--weights", str(out),
               "--out", str(report)])
    stdout = capsys.readouterr().out
    assert rc == 0
    m = re.search(r"logmel: evaluated (\d+) notes .*accuracy ([0-9.]+)", stdout)
    assert m, stdout
    res = json.loads(report.read_text())
    assert int(m.group(1)) == res["notes"] == 20                # 22 notes written, 2 synth_lead dropped
    assert float(m.group(2)) == pytest.approx(res["accuracy"], abs=5e-5)
    cm = np.array(res["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 20 and cm.sum(axis=1).tolist() == [2] * 10
    assert res["accuracy"] == pytest.approx(np.trace(cm) / 20)
    assert res["classes"] == list(FAMILIES)
    lo, hi = res["accuracy_ci95"]
    assert 0.0 <= lo <= res["accuracy"] <= hi <= 1.0 and f"95% interval {lo:.2f}-{hi:.2f}" in stdout
    # Independent check: the same model and notes, predicted here, give the same confusion matrix.
    model = keras.models.load_model(out / "logmel_cnn.keras")
    audio, meta = data.load_arrays(workdir / "train.tfrecord")
    pred = np.asarray(model.predict_on_batch(audio)).argmax(axis=1)
    mine = np.zeros((10, 10), int)
    np.add.at(mine, (meta["label"], pred), 1)
    np.testing.assert_array_equal(mine, cm)


def test_predict_json(trained, tmp_path, capsys):
    import keras
    import soundfile as sf
    out, _ = trained
    note = make_notes(per_family=1, families=[5])[0][1]
    wav = tmp_path / "mallet.wav"
    sf.write(wav, note, 44_100)            # another rate on purpose: predict resamples it
    rc = main(["predict", str(wav), "--model", "logmel", "--weights", str(out), "--json"])
    stdout = capsys.readouterr().out
    assert rc == 0
    res = json.loads(stdout)               # nothing but the JSON on stdout
    assert res["file"] == str(wav)
    top = res["logmel"]["top"]
    assert len(top) == 3 and all(t["family"] in FAMILIES for t in top)
    probs = [t["probability"] for t in top]
    assert probs == sorted(probs, reverse=True)
    full = res["logmel"]["probabilities"]
    assert list(full) == list(FAMILIES) and sum(full.values()) == pytest.approx(1.0, abs=2e-3)
    model = keras.models.load_model(out / "logmel_cnn.keras")
    x = load_audio(str(wav), reject_silent=True, onset_trim=True)
    mine = np.asarray(model.predict_on_batch(x[None]))[0]
    for f, p in zip(FAMILIES, mine):
        assert full[f] == pytest.approx(p, abs=1e-4)
    assert top[0]["family"] == FAMILIES[int(np.argmax(mine))]


def test_predict_reports_bad_files_and_continues(trained, tmp_path, capsys):
    import soundfile as sf
    out, _ = trained
    good = tmp_path / "good.wav"
    sf.write(good, make_notes(per_family=1, families=[2])[0][1], 16_000)
    bad = tmp_path / "text.wav"
    bad.write_text("not audio\n" * 100)
    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16_000, np.float32), 16_000)
    rc = main(["predict", str(good), str(bad), str(silent), "--model", "logmel", "--weights", str(out),
               "--json"])
    res = json.loads(capsys.readouterr().out)
    assert rc == 2 and len(res) == 3
    assert res[0]["file"] == str(good) and len(res[0]["logmel"]["top"]) == 3
    assert "not a readable audio file" in res[1]["error"]
    assert "silent" in res[2]["error"]


def test_cli_errors_are_one_line_messages(trained, workdir, tmp_path, capsys):
    out, _ = trained
    rc = main(["evaluate", "--model", "logmel", "--data", str(tmp_path / "missing"), "--weights", str(out),
               "--out", str(tmp_path / "e.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "does not exist" in err
    rc = main(["predict", str(workdir / "train.tfrecord"), "--model", "logmel", "--weights",
               str(tmp_path / "no-weights")])
    err = capsys.readouterr().err
    assert rc == 2 and "logmel_cnn.keras not found" in err
    cut = tmp_path / "cut.tfrecord"
    blob = (workdir / "train.tfrecord").read_bytes()
    cut.write_bytes(blob[: len(blob) // 2])
    rc = main(["train", "--model", "logmel", "--train", str(cut), "--out", str(tmp_path / "w"), "--epochs", "1",
               "--steps-per-epoch", "1", "--batch-size", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupt or truncated" in err
    assert not (tmp_path / "w" / "logmel_cnn.keras").exists()


@pytest.mark.parametrize("name", ["logmel", "waveform"])
def test_quick_start_evaluates_shipped_weights_on_embedded_sample(name, tmp_path, capsys, monkeypatch):
    """README's quick start: ``evaluate --model logmel --data data/nsynth-sample`` with weights/ as shipped."""
    if not (ROOT / "weights" / f"{name}_cnn.keras").is_file():
        pytest.skip(f"weights/{name}_cnn.keras is not in this checkout (train it: make train)")
    if not (ROOT / "data" / "nsynth-sample" / "examples.json").is_file():
        pytest.skip("data/nsynth-sample is not in this checkout")
    monkeypatch.chdir(ROOT)
    rc = main(["evaluate", "--model", name, "--data", "data/nsynth-sample", "--out", str(tmp_path / "e.json")])
    assert rc == 0, capsys.readouterr().err
    assert f"{name}: evaluated 100 notes" in capsys.readouterr().out
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["notes"] == 100 and sum(res["support"].values()) == 100
    assert res["accuracy"] > 0.2, "shipped weights are no better than twice chance on the embedded sample"


def test_accuracy_interval_is_the_wilson_interval():
    from nsynth_cnn.evaluate import accuracy_interval
    z, k, n = 1.959964, 20, 50                              # 20 of 50 real notes right
    centre, half = (k + z * z / 2) / (n + z * z), z / (n + z * z) * np.sqrt(k * (n - k) / n + z * z / 4)
    np.testing.assert_allclose(accuracy_interval(k, n), [centre - half, centre + half], atol=1e-5)
    assert accuracy_interval(20, 50)[1] - accuracy_interval(20, 50)[0] > 0.25      # 50 notes say little
    assert accuracy_interval(2000, 5000)[1] - accuracy_interval(2000, 5000)[0] < 0.03
    assert accuracy_interval(0, 10)[0] == 0.0 and accuracy_interval(10, 10)[1] == 1.0


def test_paired_comparison_counts_discordant_notes_and_exact_mcnemar_p():
    from nsynth_cnn.evaluate import paired_comparison
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    a = np.array([0, 1, 2, 3, 4, 5, 0, 0, 8, 0])           # right: 0-5, 8
    b = np.array([0, 0, 0, 0, 0, 0, 0, 0, 8, 9])           # right: 0, 8, 9
    res = paired_comparison(labels, a, b)
    assert (res["right_only_here"], res["right_only_there"], res["both_right"]) == (5, 1, 2)
    assert res["mcnemar_exact_p"] == pytest.approx(2 * (6 + 1) / 2 ** 6)    # two-sided binomial: 5 or 6 of 6
    assert paired_comparison(labels, b, a)["mcnemar_exact_p"] == pytest.approx(res["mcnemar_exact_p"])
    six_to_none = paired_comparison(labels, labels, np.where(labels < 6, 9 - labels, labels))
    assert six_to_none["right_only_here"] == 6 and six_to_none["mcnemar_exact_p"] == pytest.approx(1 / 32)
    assert paired_comparison(labels, a, a)["mcnemar_exact_p"] == 1.0


def test_evaluate_compare_pairs_two_weight_folders_on_the_same_notes(trained, workdir, tmp_path, capsys):
    out, _ = trained
    args = ["evaluate", "--model", "logmel", "--data", str(workdir / "valid"), "--weights", str(out)]
    rc = main(args + ["--compare", str(out), "--out", str(tmp_path / "same.json")])
    stdout = capsys.readouterr().out
    assert rc == 0
    res = json.loads((tmp_path / "same.json").read_text())
    pr = res["paired"]                                      # a model against itself: no discordant note
    assert (pr["right_only_here"], pr["right_only_there"], pr["mcnemar_exact_p"]) == (0, 0, 1.0)
    assert pr["accuracy"] == pytest.approx(res["accuracy"]) and pr["both_right"] == round(res["accuracy"] * 10)
    assert "notes right only in" in stdout and "exact McNemar p = 1" in stdout
    rc = main(args + ["--compare", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "logmel_cnn.keras not found" in err


def test_train_waveform_runs_both_recipe_stages_with_the_teacher(trained, workdir, tmp_path, capsys):
    """``train --model waveform --teacher DIR``: the recipe's waveform stages, the second distilled from the trained
    log-mel CNN; the intermediate network is gone afterwards; a re-run keeps the finished network."""
    out, _ = trained
    args = ["train", "--model", "waveform", "--train", str(workdir / "train.tfrecord"), "--out", str(tmp_path / "w"),
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--xla", "off"]
    rc = main(args + ["--teacher", str(out)])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    hist = json.loads((tmp_path / "w" / "waveform_cnn_history.json").read_text())
    from nsynth_cnn.params import RECIPE, TrainParams
    assert hist["meta"]["teacher"] == str(out) and hist["meta"]["params"]["distill_weight"] == TrainParams().distill_weight
    assert hist["meta"]["stage"]["teacher"] and hist["meta"]["params"]["learning_rate"] == RECIPE[2].learning_rate
    assert hist["meta"]["init_from"].endswith(RECIPE[1].out)
    assert "starting from .waveform-base" in printed and "distilled from the log-mel CNN" in printed
    assert np.isfinite(hist["loss"][0])
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["waveform_cnn.keras", "waveform_cnn_history.csv",
                                                                   "waveform_cnn_history.json"]
    before = (tmp_path / "w" / "waveform_cnn.keras").stat().st_mtime_ns
    assert main(args + ["--teacher", str(out)]) == 0
    assert "kept (delete it to train again)" in capsys.readouterr().out
    assert (tmp_path / "w" / "waveform_cnn.keras").stat().st_mtime_ns == before
    rc = main(args[:5] + ["--out", str(tmp_path / "w2")] + args[7:] + ["--teacher", str(tmp_path / "no-teacher")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error:") and "logmel_cnn.keras not found" in err
    with pytest.raises(SystemExit):         # argparse's usage error, not a traceback from inside training
        main(args + ["--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
