"""bench: a smoke run with a handful of notes (the numbers themselves are for `python -m nsynth_cnn.tools bench`)."""
from __future__ import annotations

import pytest

import json
import sys

from conftest import ROOT, subprocess_env
from nsynth_cnn.tools import bench

pytestmark = pytest.mark.slow      # runs the benchmark in subprocesses


def test_bench_smoke_pipeline_and_shuffle(tmp_path):
    out = tmp_path / "bench.json"
    lines = []
    args = ["--only", "pipeline,shuffle", "--notes", "20", "--repeats", "1", "--batch-size", "8",
            "--json", str(out)]
    assert bench.main(args, out=lines.append) == 0
    res = json.loads(out.read_text())
    rows = {r["name"]: r for r in res["rows"]}
    base = [r for r in rows.values() if r["name"].startswith("baseline")]
    assert len(base) == 1 and base[0]["notes"] == 20 and base[0]["notes_per_s"] > 0
    ours = [r for r in rows.values() if r["section"] == "pipeline" and r["ratio"] is not None]
    assert len(ours) == 9 and all(r["notes"] == 20 and r["peak_mb"] > 0 for r in ours)
    assert any("classes in first batches: prepared" in n for n in rows)
    assert res["machine"]["cpus_usable"] >= 1 and "x wall" in "\n".join(lines)


def test_bench_train_backend_agnostic_imports_no_tensorflow():
    """--only train --backend-agnostic under JAX with TensorFlow made unimportable (as on the GPU box)."""
    import subprocess
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "from nsynth_cnn.tools import bench\n"
            "sys.exit(bench.main(['--only', 'train', '--backend-agnostic', '--networks', 'waveform',\n"
            "                     '--train-batch-size', '2', '--train-steps', '1', '--warmup-steps', '1']))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=subprocess_env(KERAS_BACKEND="jax"),
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "backend jax" in res.stdout and "full-NSynth epoch" in res.stdout


def test_bench_feed_and_distill_against_an_earlier_run(tmp_path):
    """--only feed,distill: one epoch of each layout's training reader, the distillation stage against the same
    training without a teacher; --against prints each case against an earlier run's JSON."""
    first = tmp_path / "first.json"
    args = ["--only", "feed,distill", "--notes", "20", "--repeats", "1", "--batch-size", "8",
            "--distill-steps", "1", "--distill-epochs", "2"]
    assert bench.main(args + ["--json", str(first)], out=lambda *_: None) == 0
    rows = json.loads(first.read_text())["rows"]
    feed = [r for r in rows if r["section"] == "feed"]
    assert len(feed) == 5 and all(r["notes"] == 20 and r["notes_per_s"] > 0 for r in feed)
    assert any("JSON+wav" in r["name"] for r in feed) and any("prepared" in r["name"] for r in feed)
    distill = [r for r in rows if r["section"] == "distill"]
    assert len(distill) == 2 and all(r["notes"] == 8 and r["notes_per_s"] > 0 for r in distill)
    assert distill[1]["ratio"] is not None and "teacher" in distill[1]["name"]
    lines = []
    assert bench.main(["--only", "feed", "--notes", "20", "--repeats", "1", "--batch-size", "8",
                       "--against", str(first)], out=lines.append) == 0
    against = "\n".join(lines).split(f"against {first}:")[1]
    assert "now/then" in against and against.count("\nfeed ") == 5
