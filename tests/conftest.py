"""Shared fixtures: tiny generated NSynth-format notes, the two models (built once), a CLI runner.

Everything is generated in temporary folders; nothing here needs network access, GPUs or ``../shared``
(tests that use ``../shared`` skip when it is absent). Heavy objects are session-scoped so that each model
is built once and TensorFlow is imported once.
"""
from __future__ import annotations

import contextlib
import multiprocessing.process
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SR = 16_000
N = 64_000

# NSynth family id -> (name, a source it has). Id 9 (synth_lead) is in the data on purpose: readers drop it.
FAMILY_SOURCES = {0: "electronic", 1: "acoustic", 2: "acoustic", 3: "acoustic", 4: "acoustic", 5: "acoustic",
                  6: "electronic", 7: "acoustic", 8: "acoustic", 9: "synthetic", 10: "synthetic"}


def tone(freq_hz: float, seconds: float = 4.0, rate: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def synth_note(family_id: int, pitch: int, velocity: int) -> np.ndarray:
    """A deterministic 4 s harmonic note whose timbre/envelope depends on the family (NSynth 3 s + release)."""
    rng = np.random.default_rng(1000 * family_id + pitch)
    t = np.arange(N) / SR
    f0 = 440.0 * 2 ** ((pitch - 69) / 12)
    harmonics = np.arange(1, 9)
    weights = rng.uniform(0.05, 1.0, harmonics.size) / harmonics ** (0.5 + 0.15 * family_id)
    x = sum(w * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28)) for h, w in zip(harmonics, weights)
            if f0 * h < SR / 2)
    env = np.exp(-t * (0.3 + 0.4 * (family_id % 4)))
    env[3 * SR:] *= np.linspace(1.0, 0.0, N - 3 * SR) ** 2
    x = x * env
    return (x / np.max(np.abs(x)) * (0.2 + 0.6 * velocity / 127)).astype(np.float32)


def make_notes(per_family: int = 2, families=range(11)) -> list[tuple[dict, np.ndarray]]:
    """``(meta, audio)`` pairs with NSynth metadata; instrument ids unique per (family, index)."""
    from nsynth_cnn import writers
    from nsynth_cnn.params import NSYNTH_FAMILY_NAMES
    notes = []
    for fam in families:
        for k in range(per_family):
            pitch, vel = 48 + 7 * k + fam, (25, 50, 75, 100, 127)[(fam + k) % 5]
            q = [int(b) for b in np.random.default_rng(fam * 10 + k).integers(0, 2, 10)]
            meta = writers.note_metadata(family=NSYNTH_FAMILY_NAMES[fam], source=FAMILY_SOURCES[fam],
                                      instrument=fam * 10 + k, pitch=pitch, velocity=vel, qualities=q)
            meta["note"] = len(notes)
            notes.append((meta, synth_note(fam, pitch, vel)))
    return notes


def train_valid_dir(root: Path) -> Path:
    """``root/train.tfrecord`` (the 22 notes of :func:`make_notes`) and ``root/valid`` (every second one, JSON+wav)."""
    from nsynth_cnn import writers
    notes = make_notes()
    writers.write_tfrecord(str(root / "train.tfrecord"), notes)
    writers.write_jsonwav(str(root / "valid"), notes[1::2])
    return root


@pytest.fixture(scope="session")
def notes():
    """22 notes: 2 per NSynth family id 0..10, synth_lead (9) included."""
    return make_notes()


@pytest.fixture(scope="session")
def tfrecord_file(tmp_path_factory, notes):
    from nsynth_cnn import writers
    path = tmp_path_factory.mktemp("tfrecord") / "nsynth-tiny.tfrecord"
    assert writers.write_tfrecord(str(path), notes) == len(notes)
    return path


@pytest.fixture(scope="session")
def jsonwav_dir(tmp_path_factory, notes):
    from nsynth_cnn import writers
    folder = tmp_path_factory.mktemp("jsonwav") / "nsynth-tiny"
    assert writers.write_jsonwav(str(folder), notes) == len(notes)
    return folder


@pytest.fixture(scope="session")
def built_models():
    """``{"waveform": model, "logmel": model}`` from ``models.build_model`` with default parameters."""
    from nsynth_cnn import models
    return {name: models.build_model(name) for name in models.MODEL_NAMES}


@pytest.fixture(scope="session")
def probe_audio():
    """Four model inputs: two notes, a quiet noise burst, and digital silence."""
    rng = np.random.default_rng(7)
    x = np.stack([synth_note(3, 60, 100), synth_note(6, 45, 50),
                  (0.01 * rng.standard_normal(N)).astype(np.float32), np.zeros(N, np.float32)])
    return x.astype(np.float32)


def subprocess_env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.update(extra)
    return env


def run_cli(*args, cwd=ROOT, timeout=1800, env=None, module="nsynth_cnn") -> subprocess.CompletedProcess:
    """``python -m nsynth_cnn ARGS`` (or another ``module``, e.g. ``nsynth_cnn.tools``) in a subprocess (fresh
    interpreter, as a user would run it)."""
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=cwd,
                          env=env or subprocess_env(), capture_output=True, text=True, timeout=timeout)


def shared_path(*parts) -> Path:
    """A path inside ``../shared``; skips the calling test when it is absent."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: ../shared is optional and absent in this checkout")
    return p


def pytest_configure(config):
    # Keras 3.15 + NumPy 2.4 emit this on every tensor -> numpy conversion; it says nothing about our code.
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


# ----------------------------------------------------------------------------------------------- the two tiers
# `python -m pytest -q -m "not slow"` is the fast tier; the full suite runs everything. A test that trains a network
# (keras Model.fit) or starts a subprocess (a CLI run, the notebook's kernel, Chromium, a JAX process, worker
# processes) must be marked @pytest.mark.slow (the marker is declared in pyproject.toml): unmarked, those calls fail
# here, so the fast tier stays fast and honest.
SLOW_ONLY = "is slow: mark the test @pytest.mark.slow (it {what}); the fast tier (-m 'not slow') must not"


@contextlib.contextmanager
def _fast_tier_guard(item):
    if item.get_closest_marker("slow") is not None:
        yield
        return

    def refuse(what):
        def fail(*args, **kwargs):
            raise RuntimeError(f"{item.nodeid} " + SLOW_ONLY.format(what=what))
        return fail
    import keras
    trainer = next(c for c in keras.Model.__mro__ if "fit" in c.__dict__)       # the backend's Trainer class
    patches = [(subprocess.Popen, "__init__", refuse("starts a subprocess")),
               (multiprocessing.process.BaseProcess, "start", refuse("starts a worker process")),
               (trainer, "fit", refuse("trains a network"))]
    saved = [(obj, name, obj.__dict__[name]) for obj, name, _ in patches]
    try:
        for obj, name, fn in patches:
            setattr(obj, name, fn)
        yield
    finally:
        for obj, name, fn in saved:
            setattr(obj, name, fn)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _fast_tier_guard(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _fast_tier_guard(item):
        yield
