"""``python -m nsynth_cnn.tools bench``: speed and memory of the project, measured side by side in one run.

Every number is measured in this process (or in a child it starts, for cold-start latency) on the same
generated notes, with the cases of a section interleaved over ``--repeats`` rounds (median throughput,
largest peak), so the printed *ratios* hold even on a busy machine. Sections (``--only a,b``):

``pipeline``  notes/s and peak memory up to model-ready batches: tf.data read + parse + batch of an
              NSynth-schema float32 TFRecord (and of the same notes prepared as int16 shards), alone and
              with each model's front-end layers applied to the batches; against the baseline of our
              reference projects (per-file wav decoding + ``librosa.feature.melspectrogram`` +
              ``power_to_db`` in a Python loop). Ratio = pipeline / baseline.
``inference`` batched CPU inference per network: the model alone, and streamed from the TFRecord.
``predict``   single-file ``predict`` latency: cold (a new ``python -m nsynth_cnn predict`` process) and
              warm (repeated in-process call).
``train``     training throughput per network (notes/s; XLA off and on) and the projected time of one
              full-NSynth epoch (289,205 notes). ``--backend-agnostic`` feeds synthetic numpy batches and
              imports no TensorFlow, so it runs under ``KERAS_BACKEND=jax`` (e.g. on a GPU box).
``shuffle``   class mixing of the first batches: the family-ordered file vs. its prepared shards.
``order``     (not by default; minutes) the log-mel CNN trained on the family-ordered file at the official
              file's proportions through the train path, and on the same notes pre-shuffled: held-out accuracy.
``memory``    peak memory while evaluating a 4,096-note TFRecord (streamed) vs. loading it into RAM.
``feed``      (not by default) what the host CPU delivers to the training step: one epoch of each layout's
              training reader (float32 TFRecord, prepared shards, JSON+wav), and JSON+wav in evaluation order,
              against the one-note-at-a-time reader.
``distill``   (not by default; minutes) the distillation stage (waveform CNN with the log-mel teacher, through
              ``train.fit_network``) against the same training without a teacher.
``scale``     (opt-in) epoch read throughput of prepared shards at growing sizes (``--scale-gb``), with the
              page cache dropped for those files before each cold epoch.

``--against OLD.json`` (any sections): after the table, notes/s of each case against the same case in an
earlier run's ``--json`` (e.g. the code before a change), as a ratio now / then.

Generated data lives in a temporary folder (``--workdir``), deleted at the end unless ``--keep``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import numpy as np

from ..params import (AUDIO, FAMILIES, NSYNTH_FAMILY_NAMES, NSYNTH_SOURCE_NAMES, LogImageParams, LogMelParams,
                     TrainParams, label_to_nsynth_family)
from .. import schema
from ..weights import weights_path
from . import REPO_ROOT

FULL_NSYNTH_TRAIN_NOTES = 289_205
NSYNTH_TEST_NOTES = 4_096
SECTIONS = ("pipeline", "inference", "predict", "train", "shuffle", "memory", "scale", "order", "feed", "distill")
DEFAULT_SECTIONS = ("pipeline", "inference", "predict", "train", "shuffle", "memory")
NETWORKS = ("waveform", "logmel")
# the layers that turn a waveform batch into each network's time-frequency image (the convolutions' input)
FRONT_END_LAYERS = {"waveform": ("peak_normalize", "downsample", "filterbank"),
                    "logmel": ("peak_normalize", "log_mel")}
MB = 1 << 20


# ----------------------------------------------------------------------------------------------- memory
def _status_kb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return float(line.split()[1])
    except OSError:
        pass
    return None


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    if kb is None:
        import resource
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
    return kb / 1024


class PeakMemory:
    """Peak resident memory (MB) of this process during a ``with`` block.

    On Linux the kernel's high-water mark is reset on entry (``/proc/self/clear_refs``) and read on exit;
    elsewhere a thread samples the RSS every 2 ms. ``delta`` = peak minus the RSS at entry.
    """

    def __enter__(self):
        self.start = rss_mb()
        self._reset = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            self._reset = _status_kb("VmHWM") is not None
        except OSError:
            pass
        self._samples = [self.start]
        self._stop = threading.Event()
        if not self._reset:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.002):
            self._samples.append(rss_mb())

    def __exit__(self, *exc):
        if self._reset:
            self.peak = max(_status_kb("VmHWM") / 1024, self.start)
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._samples + [rss_mb()])
        self.delta = self.peak - self.start
        return False


# ----------------------------------------------------------------------------------------------- results
@dataclasses.dataclass
class Row:
    section: str
    name: str
    notes: int = 0                    # notes per measured run
    seconds: float = float("nan")     # median over runs
    peak_mb: float = float("nan")     # largest peak RSS over runs
    delta_mb: float = float("nan")    # largest (peak - RSS at start) over runs
    ratio: float | None = None        # wall-clock notes/s vs. the section's reference row
    note: str = ""
    runs: int = 0
    cpu_seconds: float = float("nan")  # median CPU time (all threads of the process) per run
    cpu_ratio: float | None = None    # notes per CPU-second vs. the reference row

    @property
    def notes_per_s(self) -> float:
        return self.notes / self.seconds if self.seconds and self.seconds > 0 else float("nan")

    @property
    def cpu_ms_per_note(self) -> float:
        return 1000 * self.cpu_seconds / self.notes if self.notes else float("nan")


class Report:
    def __init__(self, out=print):
        self.rows: list[Row] = []
        self.info: dict = {}
        self.out = out

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        if not row.notes:
            self.out(f"  {row.name}: {row.note}")
            return row
        self.out(f"  {row.name}: {_fmt_rate(row)}, {row.cpu_ms_per_note:.2f} CPU-ms/note, "
                 f"peak {row.peak_mb:,.0f} MB (+{row.delta_mb:,.0f})"
                 + (f", x{row.ratio:.1f} wall" if row.ratio is not None else "")
                 + (f", x{row.cpu_ratio:.1f} CPU" if row.cpu_ratio is not None else "")
                 + (f"  [{row.note}]" if row.note else ""))
        return row

    def table(self) -> str:
        lines = []
        head = (f"{'section':9s} {'case':62s} {'notes/s':>9s} {'ms/note':>9s} {'CPU-ms/note':>11s} "
                f"{'peak MB':>8s} {'+MB':>6s} {'x wall':>7s} {'x CPU':>7s}  note")
        lines.append(head)
        lines.append("-" * len(head))
        for r in self.rows:
            rate = r.notes_per_s
            ms = 1000.0 / rate if rate == rate and rate > 0 else float("nan")
            lines.append(f"{r.section:9s} {r.name[:62]:62s} {_num(rate, 1 if rate < 10 else 0):>9s} "
                         f"{_num(ms, 2):>9s} {_num(r.cpu_ms_per_note, 2):>11s} {_num(r.peak_mb):>8s} "
                         f"{_num(r.delta_mb):>6s} "
                         f"{'' if r.ratio is None else f'x{r.ratio:.1f}':>7s} "
                         f"{'' if r.cpu_ratio is None else f'x{r.cpu_ratio:.1f}':>7s}  {r.note}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"machine": self.info, "rows": [{**dataclasses.asdict(r), "notes_per_s": r.notes_per_s}
                                               for r in self.rows]}


def _num(x, digits=0) -> str:
    if x is None or x != x:
        return "-"
    return f"{x:,.{digits}f}"


def _fmt_rate(row: Row) -> str:
    return f"{row.notes_per_s:,.1f} notes/s ({row.notes} notes, {row.seconds:.2f} s)"


def measure(report: Report, section: str, cases: list[tuple[str, Callable[[], int]]], repeats: int,
            reference: str | None = None, notes: dict[str, str] | None = None) -> dict[str, Row]:
    """Run each case ``repeats`` times, interleaved (a b c a b c ...); each case returns the notes it did."""
    times, cpus = {name: [] for name, _ in cases}, {name: [] for name, _ in cases}
    counts, peaks, deltas = {}, {name: [] for name, _ in cases}, {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            with PeakMemory() as pm:
                c0, t0 = time.process_time(), time.perf_counter()
                counts[name] = fn()
                times[name].append(time.perf_counter() - t0)
                cpus[name].append(time.process_time() - c0)
            peaks[name].append(pm.peak)
            deltas[name].append(pm.delta)
    rows = {name: Row(section, name, counts[name], statistics.median(times[name]), max(peaks[name]),
                      max(deltas[name]), note=(notes or {}).get(name, ""), runs=repeats,
                      cpu_seconds=statistics.median(cpus[name])) for name, _ in cases}
    if reference:
        ref = rows[reference]
        for name, row in rows.items():
            if name != reference:
                row.ratio = row.notes_per_s / ref.notes_per_s
                row.cpu_ratio = ref.cpu_ms_per_note / row.cpu_ms_per_note
    for name, _ in cases:
        report.add(rows[name])
    return rows


# ----------------------------------------------------------------------------------------------- generated notes
def _harmonic(f0: float, tilt: float, decay: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(AUDIO.num_samples, dtype=np.float64) / AUDIO.sample_rate_hz
    x = np.zeros_like(t)
    for h in range(1, 9):
        if f0 * h < AUDIO.sample_rate_hz / 2:
            x += rng.uniform(0.3, 1.0) / h ** tilt * np.sin(2 * np.pi * f0 * h * t + rng.uniform(0, 6.28))
    held = int(AUDIO.held_seconds * AUDIO.sample_rate_hz)
    env = np.exp(-decay * t)
    env[held:] *= np.linspace(1.0, 0.0, AUDIO.num_samples - held) ** 2
    x *= env
    return (x / max(np.max(np.abs(x)), 1e-9)).astype(np.float32)


def generated_notes(n: int, seed: int = 0, bank_per_family: int = 24) -> Iterator[tuple[dict, np.ndarray]]:
    """``n`` NSynth-format ``(meta, audio)`` pairs, **ordered by family** like the official train file.

    Harmonic tones with a per-family spectral tilt and decay; each family draws from a bank of
    ``bank_per_family`` synthesised notes, varied per note by velocity (gain) and a random onset delay.
    """
    rng = np.random.default_rng(seed)
    per = [n // len(FAMILIES) + (1 if i < n % len(FAMILIES) else 0) for i in range(len(FAMILIES))]
    idx = 0
    for label, count in enumerate(per):
        fam = label_to_nsynth_family(label)
        bank = [(p, _harmonic(440.0 * 2 ** ((p - 69) / 12), 0.5 + 0.15 * label, 0.3 + 0.4 * (label % 4), rng))
                for p in rng.integers(24, 96, min(bank_per_family, max(count, 1)))]
        for k in range(count):
            pitch, base = bank[k % len(bank)]
            velocity = int(rng.choice((25, 50, 75, 100, 127)))
            shift = int(rng.integers(0, 800))
            audio = np.zeros_like(base)
            audio[shift:] = base[:AUDIO.num_samples - shift] * (0.2 + 0.6 * velocity / 127)
            meta = _meta(NSYNTH_FAMILY_NAMES[fam], label, k, pitch, velocity, idx)
            idx += 1
            yield meta, audio


def _meta(family: str, label: int, k: int, pitch: int, velocity: int, idx: int) -> dict:
    from ..writers import note_metadata
    source = NSYNTH_SOURCE_NAMES[k % 3]
    meta = note_metadata(family=family, source=source, instrument=k // 16, pitch=int(pitch), velocity=velocity,
                         note=idx, instrument_str=f"{family}_{source}_{k // 16:03d}")
    meta["note_str"] = f"{meta['instrument_str']}-{int(pitch):03d}-{velocity:03d}-{idx:06d}"  # unique
    return meta


class Workdir:
    """Generated data sets, made on first use and shared by the sections."""

    def __init__(self, root: str, notes: int, batch: int, log):
        self.root, self.n, self.batch, self.log = root, notes, batch, log
        self._cache: dict[str, str] = {}

    def _once(self, key: str, make: Callable[[str], None], path: str) -> str:
        if key not in self._cache:
            t0 = time.perf_counter()
            make(path)
            self.log(f"  (generated {key}: {path} in {time.perf_counter() - t0:.0f} s)")
            self._cache[key] = path
        return self._cache[key]

    def tfrecord(self, n: int | None = None) -> str:
        from .. import writers
        n = n or self.n
        path = os.path.join(self.root, f"nsynth-{n}.tfrecord")
        return self._once(f"tfrecord{n}", lambda p: writers.write_tfrecord(p, generated_notes(n)), path)

    def jsonwav(self) -> str:
        """The same notes as :meth:`tfrecord` in NSynth's JSON+wav layout (16-bit wav files)."""
        from .. import data, writers
        path = os.path.join(self.root, f"jsonwav-{self.n}")
        rec = self.tfrecord()

        def notes():
            for e in data.iterate(data.nsynth_dataset(rec), rec):
                meta = {k: (v.decode() if isinstance(v, bytes) else int(v)) for k, v in e.items()
                        if k in schema.META_KEYS}
                yield {**meta, "qualities": e["qualities"].tolist()}, e["audio"]
        return self._once("jsonwav", lambda p: writers.write_jsonwav(p, notes()), path)

    def prepared(self) -> str:
        from .. import prepare
        path = os.path.join(self.root, f"prepared-{self.n}")
        shards = max(2, min(64, self.n // 256))
        return self._once("prepared", lambda p: prepare.prepare(self.tfrecord(), p, shards, log=None), path)

    def weights(self) -> str:
        path = os.path.join(self.root, "weights")

        def make(p):
            from .. import models
            os.makedirs(p, exist_ok=True)
            for name in NETWORKS:     # untrained: latency and throughput do not depend on the weights
                models.build_model(name).save(weights_path(p, name))
        return self._once("weights", make, path)

    def wav(self) -> str:
        path = os.path.join(self.root, "note.wav")

        def make(p):
            import soundfile as sf
            _, audio = next(generated_notes(1, seed=3))
            sf.write(p, audio, AUDIO.sample_rate_hz, subtype="PCM_16")
        return self._once("wav", make, path)


# ----------------------------------------------------------------------------------------------- (1)+(2) pipeline
def front_end_fn(name: str, xla: bool = False):
    """The network's own front-end layers (from a built model) as one compiled function on batches."""
    import tensorflow as tf
    from .. import models
    model = models.build_model(name, aug=None)
    layers = [model.get_layer(n) for n in FRONT_END_LAYERS[name]]

    @tf.function(input_signature=[tf.TensorSpec([None, AUDIO.num_samples], tf.float32)], jit_compile=xla)
    def fn(x):
        for layer in layers:
            x = layer(x)
        return x
    fn.layers = layers
    return fn


def _tfdata_case(path: str, batch: int, front=None, element_wise: bool = False) -> Callable[[], int]:
    """Streamed training input of ``path`` (``batches.training_dataset``, no cache; prepared shards: whole batches
    parsed at once). ``element_wise``: the reader that float32 TFRecords, the cached path and evaluation use
    (parse in small batches, unbatch to notes, re-batch)."""
    from .. import batches, data
    if element_wise:
        files = data.resolve_source(path)[1]
        ds = data.tfrecord_dataset(files, shuffle_seed=0, fields=schema.LEAN_FIELDS).map(
            lambda e: (e["audio"], e["label"])).batch(batch).prefetch(2)
    else:
        ds = batches.training_dataset(path, batch_size=batch, shuffle_buffer=0, seed=0, cache=False)

    def run(ds=ds) -> int:
        n = 0
        for audio, _label in ds:
            if front is not None:
                front(audio).numpy()
            n += int(audio.shape[0])
        return n
    run(ds.take(2))       # warm-up: tracing and XLA compilation stay out of the timings
    return run


def _librosa_case(folder: str, batch: int, p: LogMelParams = LogMelParams()) -> Callable[[], int]:
    """The reference projects' loop: per file librosa.load + melspectrogram + power_to_db, stacked in batches.

    Its BLAS is held to one thread (threadpoolctl): on a busy 2-core machine OpenBLAS' second thread makes
    librosa's mel projection ~10x slower, which would flatter our ratio.
    """
    import warnings
    import librosa
    from threadpoolctl import threadpool_limits
    files = sorted(glob.glob(os.path.join(folder, "audio", "*.wav")))

    def run(files=files) -> int:
        out, batch_feats = 0, []
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for f in files:
                y, sr = librosa.load(f, sr=AUDIO.sample_rate_hz)
                mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=p.fft_length, hop_length=p.stft_hop_samples,
                                                     win_length=p.stft_window_samples, n_mels=p.num_mel_bins,
                                                     fmin=p.mel_min_hz, fmax=p.mel_max_hz)
                batch_feats.append(librosa.power_to_db(mel, ref=np.max, top_db=LogImageParams().top_db))
                if len(batch_feats) == batch:
                    np.stack(batch_feats)
                    out += len(batch_feats)
                    batch_feats = []
        return out + len(batch_feats)
    run(files[:2])        # warm-up: librosa's lazy imports and first-call set-up stay out of the timings
    return run


def section_pipeline(report: Report, wd: Workdir, args) -> None:
    report.out(f"\n[pipeline] {wd.n} notes, batch {args.batch_size}: tf.data + front ends vs. librosa loop")
    rec, prep, wav = wd.tfrecord(), wd.prepared(), wd.jsonwav()
    fronts = {name: front_end_fn(name) for name in NETWORKS}
    fronts_xla = {name: front_end_fn(name, xla=True) for name in NETWORKS}
    base = "baseline: wav decode + librosa melspectrogram + power_to_db (Python loop)"
    cases = [(base, _librosa_case(wav, args.batch_size))]
    for label, path in (("float32 TFRecord", rec), ("prepared int16 shards", prep)):
        cases.append((f"tf.data read+parse+batch, {label}", _tfdata_case(path, args.batch_size)))
        if path == prep:       # the float32 file is read element-wise anyway (batches.training_dataset)
            cases.append((f"  for contrast: parsed per note, unbatched, re-batched, {label}",
                          _tfdata_case(path, args.batch_size, element_wise=True)))
        for name in NETWORKS:
            fe = "+".join(type(layer).__name__ for layer in fronts[name].layers)
            cases.append((f"  + {name} front end ({fe}), {label}",
                          _tfdata_case(path, args.batch_size, fronts[name])))
            if path == rec:
                cases.append((f"  + {name} front end, XLA, {label}", _tfdata_case(path, args.batch_size,
                                                                                  fronts_xla[name])))
    measure(report, "pipeline", cases, args.repeats, reference=base)


# ----------------------------------------------------------------------------------------------- (3) inference
def section_inference(report: Report, wd: Workdir, args) -> None:
    from .. import evaluate, models
    report.out(f"\n[inference] batched CPU inference, batch {args.batch_size}")
    rec = wd.tfrecord()
    x = np.stack([a for _, a in generated_notes(args.batch_size, seed=5)])
    batches = max(2, min(wd.n // args.batch_size, 16))
    cases = []
    for name in NETWORKS:
        model = models.build_model(name)
        model.predict_on_batch(x)

        def in_memory(model=model) -> int:
            for _ in range(batches):
                model.predict_on_batch(x)
            return batches * len(x)

        def streamed(model=model) -> int:
            return len(evaluate.predict_source(model, rec, batch_size=args.batch_size).labels)
        xla_model = models.build_model(name)
        xla_model.compile(jit_compile=True)
        xla_model.predict_on_batch(x)

        def in_memory_xla(model=xla_model) -> int:
            for _ in range(batches):
                model.predict_on_batch(x)
            return batches * len(x)
        cases += [(f"{name}: model.predict_on_batch, in-memory batches", in_memory),
                  (f"{name}: same, model compiled with XLA (jit_compile=True)", in_memory_xla),
                  (f"{name}: evaluate.predict_source from the TFRecord", streamed)]
    measure(report, "inference", cases, args.repeats)


def _child_run(cmd: list[str], env: dict) -> tuple[float, float, int, str, float]:
    """Wall seconds, peak RSS (MB), return code, output and CPU seconds of a child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (time.perf_counter() - t0, usage.ru_maxrss / 1024, proc.returncode, out,
            usage.ru_utime + usage.ru_stime)


def section_predict(report: Report, wd: Workdir, args) -> None:
    from .. import predict
    from ..audio import load_audio
    from ..weights import load_trained
    report.out("\n[predict] single-file latency: cold (new process) and warm (in-process)")
    weights, wav = wd.weights(), wd.wav()
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for model in ("both", *NETWORKS):
        cmd = [sys.executable, "-m", "nsynth_cnn", "predict", wav, "--weights", weights, "--model", model]
        runs = [_child_run(cmd, env) for _ in range(args.repeats if model == "both" else 1)]
        bad = [r for r in runs if r[2] != 0]
        if bad:
            raise RuntimeError(f"predict failed (rc {bad[0][2]}):\n{bad[0][3][-2000:]}")
        report.add(Row("predict", f"cold: python -m nsynth_cnn predict note.wav --model {model}", 1,
                       statistics.median(r[0] for r in runs), max(r[1] for r in runs), float("nan"),
                       note="child process peak RSS", runs=len(runs),
                       cpu_seconds=statistics.median(r[4] for r in runs)))
    loaded = {n: load_trained(n, weights) for n in NETWORKS}
    cases = []
    for model in ("both", *NETWORKS):
        chosen = loaded if model == "both" else {model: loaded[model]}

        def call(chosen=chosen) -> int:
            audio = load_audio(wav, reject_silent=True, onset_trim=True)
            predict.classify(chosen, audio)
            return 1
        call()
        cases.append((f"warm: load_audio + classify, --model {model}", call))
    per = max(3, args.repeats * 3)
    measure(report, "predict", cases, per)


# ----------------------------------------------------------------------------------------------- (4) training
def _compile_like_train(model, p: TrainParams, xla):
    """The optimizer, loss and metrics of ``train.fit_network`` (AdamW, label-smoothed cross-entropy)."""
    import keras
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=p.learning_rate, weight_decay=p.weight_decay),
                  loss=keras.losses.CategoricalCrossentropy(label_smoothing=p.label_smoothing),
                  metrics=["accuracy"], weighted_metrics=[], jit_compile=xla)
    return model


def section_train(report: Report, wd: Workdir | None, args) -> None:
    """Training steps on synthetic numpy batches (the tf.data input is measured in ``pipeline``)."""
    import keras
    from .. import models
    from ..train import has_gpu
    backend = keras.backend.backend()
    gpu = has_gpu()
    mixed = {"on": True, "off": False, "auto": gpu}[args.mixed_precision]
    b = args.train_batch_size
    report.out(f"\n[train] backend {backend}, {'GPU' if gpu else 'CPU'}, batch {b}, "
               f"{args.train_steps} timed steps after {args.warmup_steps} warm-up, mixed precision "
               f"{'on' if mixed else 'off'}")
    x = np.stack([a for _, a in generated_notes(b, seed=11)])
    labels = np.arange(b) % len(FAMILIES)
    y = np.eye(len(FAMILIES), dtype=np.float32)[labels]
    w = np.ones(b, np.float32)
    if backend == "tensorflow" and not gpu:
        xla_modes = {"both": (False, True), "on": (True,), "off": (False,), "auto": ("auto",)}[args.train_xla]
    else:
        xla_modes = ("auto",)            # JAX always compiles with XLA; TF on GPU: Keras' default
    p = TrainParams()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        for name in args.networks:
            for xla in xla_modes:
                keras.utils.set_random_seed(p.seed)
                model = _compile_like_train(models.build_model(name, train=p), p, xla)
                for _ in range(args.warmup_steps):
                    model.train_on_batch(x, y, sample_weight=w)

                last = {}

                def steps(model=model, last=last) -> int:
                    for _ in range(args.train_steps):
                        last["loss"] = model.train_on_batch(x, y, sample_weight=w)
                    return args.train_steps * b
                xla_name = {True: "XLA on", False: "XLA off", "auto": "XLA " + (
                    "on" if backend == "jax" else "auto")}[xla]
                row = measure(report, "train", [(f"{name}: train_on_batch ({backend}, {xla_name})", steps)],
                              1)[f"{name}: train_on_batch ({backend}, {xla_name})"]
                epoch = FULL_NSYNTH_TRAIN_NOTES / row.notes_per_s
                loss = float(np.ravel(np.asarray(last["loss"], dtype=np.float64))[0])
                row.note = f"full-NSynth epoch ~{_hms(epoch)}; last loss {loss:.3f}"
                report.out(f"    -> one epoch of {FULL_NSYNTH_TRAIN_NOTES:,} notes ~ {_hms(epoch)}")
                del model
                keras.backend.clear_session()
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _hms(seconds: float) -> str:
    if seconds != seconds:
        return "-"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h} h {rem // 60:02d} min" if h else f"{rem // 60} min {rem % 60:02d} s"


# ----------------------------------------------------------------------------------------------- shuffle
def first_batch_classes(path, batch: int, shuffle_buffer: int, batches: int = 5, seed: int = 0) -> list[int]:
    """Distinct classes in each of the first ``batches`` training batches of ``path``."""
    from .. import data
    from ..batches import training_dataset
    ds = training_dataset(path, batch_size=batch, shuffle_buffer=shuffle_buffer, seed=seed, cache=False)
    return [len(set(lab.tolist())) for _, lab in data.iterate(ds.take(batches), path)]


def section_shuffle(report: Report, wd: Workdir, args) -> None:
    from .. import prepare
    report.out(f"\n[shuffle] prepare the family-ordered {wd.n}-note file, and classes in the first batches")
    rec = wd.tfrecord()
    out = os.path.join(wd.root, "prepared-shuffle")
    shards = max(2, min(64, wd.n // 256))

    def run() -> int:
        return prepare.prepare(rec, out, shards, overwrite=True, log=None)["notes"]
    measure(report, "shuffle", [(f"prepare: {wd.n} notes -> {shards} shuffled int16 shards", run)], 1)
    scaled = max(1, round(TrainParams().shuffle_buffer * wd.n / FULL_NSYNTH_TRAIN_NOTES))
    default = TrainParams().shuffle_buffer
    for label, path in (("raw family-ordered TFRecord", rec), ("prepared shards", out)):
        for buf, why in ((scaled, f"{default} scaled to {wd.n}/{FULL_NSYNTH_TRAIN_NOTES:,} notes"),
                         (default, "default")):
            classes = first_batch_classes(path, args.batch_size, buf)
            report.add(Row("shuffle", f"classes in first batches: {label}, shuffle buffer {buf}",
                           note=f"{classes} of {len(FAMILIES)} ({why})"))


# ----------------------------------------------------------------------------------------------- order
def section_order(report: Report, wd: Workdir, args) -> None:
    """Issue 23's proof: a family-ordered single file of N notes, with the shuffle buffer scaled to the official
    file's proportions (4096 N / 289,205), trained through the ordinary train path (which converts it into
    shuffled shards), against the same notes pre-shuffled in ``--order-repeats`` random orders (their spread is
    the noise of training on another order); all scored on the same held-out generated instruments."""
    from .. import batches, evaluate, train, writers
    from ..weights import load_trained
    n, root = wd.n, os.path.join(wd.root, "order")
    buf = max(1, round(TrainParams().shuffle_buffer * n / FULL_NSYNTH_TRAIN_NOTES))
    p = dataclasses.replace(TrainParams(), shuffle_buffer=buf, epochs=args.order_epochs, seed=args.order_seed)
    report.out(f"\n[order] log-mel CNN, {p.epochs} epochs (seed {p.seed}) on {n} family-ordered notes (shuffle "
               f"buffer {buf}) vs. the same notes pre-shuffled ({args.order_repeats} orders)")
    ordered = wd.tfrecord()
    notes = list(generated_notes(n))
    runs = [("ordered", "the family-ordered file (converted by the train path)", ordered)]
    for k in range(1, args.order_repeats + 1):
        path = os.path.join(root, f"shuffled{k}", "nsynth-train.tfrecord")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writers.write_tfrecord(path, (notes[i] for i in np.random.default_rng(k).permutation(n)))
        runs.append((f"shuffled{k}", f"the same notes pre-shuffled (order {k})", path))
    held = os.path.join(root, "heldout.tfrecord")
    writers.write_tfrecord(held, generated_notes(max(500, n // 4), seed=1))
    raw = batches.training_dataset(ordered, batch_size=p.batch_size, shuffle_buffer=buf, seed=p.seed, cache=False)
    report.add(Row("order", "families per batch, the family-ordered file read as it is (no conversion)",
                   note=f"{batches.families_per_batch(raw):.2f} of {len(FAMILIES)}"))
    preds = {}
    for key, label, src in runs:
        out = os.path.join(root, key)
        t0 = time.perf_counter()
        hist = train.fit_network("logmel", src, None, out, p, run=train.RunOptions(verbose=0))
        pred = preds[key] = evaluate.predict_source(load_trained("logmel", out), held)
        right = int((pred.predicted == pred.labels).sum())
        lo, hi = evaluate.accuracy_interval(right, len(pred.labels))
        report.add(Row("order", f"log-mel CNN trained on {label}", note=(
            f"held-out accuracy {right / len(pred.labels):.3f} ({lo:.2f}-{hi:.2f}, {len(pred.labels)} notes); "
            f"families per batch {hist['meta']['families_per_batch']}; {time.perf_counter() - t0:.0f} s")))
    keys = [key for key, _, _ in runs]
    for a, b in zip(keys, keys[1:]):                  # same held-out file read in the same order by every run
        pair = evaluate.paired_comparison(preds[a].labels, preds[a].predicted, preds[b].predicted)
        report.add(Row("order", f"paired on the held-out notes: right only after {a} / only after {b}",
                       note=f"{pair['right_only_here']} / {pair['right_only_there']} "
                            f"(exact McNemar p = {pair['mcnemar_exact_p']:.2g})"))


# ----------------------------------------------------------------------------------------------- feed
def _epoch_case(ds) -> Callable[[], int]:
    """One pass over a dataset of batches (tuples, or element dicts holding ``audio``); returns the notes."""
    def run(ds=ds) -> int:
        n = 0
        for batch in ds:
            n += int((batch["audio"] if isinstance(batch, dict) else batch[0]).shape[0])
        return n
    run(ds.take(2))       # warm-up: tracing stays out of the timings
    return run


def section_feed(report: Report, wd: Workdir, args) -> None:
    """Issue 27 ("keeps the GPU fed"): one epoch of each layout's training reader (``batches.training_dataset``, no
    cache, no shuffle buffer: the seeded file or note order alone), and of the JSON+wav folder in evaluation order
    (``data.nsynth_dataset``); for contrast, ``data.jsonwav_records`` (one note at a time, in this thread)
    through ``tf.data.Dataset.from_generator``."""
    import tensorflow as tf
    from .. import batches, data
    b = args.batch_size
    report.out(f"\n[feed] {wd.n} notes, batch {b}: one epoch of each layout's training reader")
    rec, prep, wav = wd.tfrecord(), wd.prepared(), wd.jsonwav()

    def reader(path):
        return batches.training_dataset(path, batch_size=b, shuffle_buffer=0, seed=0, cache=False)
    one_at_a_time = tf.data.Dataset.from_generator(lambda: data.jsonwav_records(wav),
                                                   output_signature=schema.element_signature())
    ref = "training reader: float32 TFRecord"
    cases = [(ref, _epoch_case(reader(rec))),
             ("training reader: prepared int16 shards", _epoch_case(reader(prep))),
             ("training reader: JSON+wav folder (seeded note order)", _epoch_case(reader(wav))),
             ("JSON+wav folder in note_str order (evaluation reader)", _epoch_case(data.nsynth_dataset(wav).batch(b))),
             ("  for contrast: JSON+wav one note at a time (from_generator)", _epoch_case(one_at_a_time.batch(b)))]
    measure(report, "feed", cases, args.repeats, reference=ref)


def section_distill(report: Report, wd: Workdir, args) -> None:
    """Issue 27: the distillation stage, the waveform CNN trained through ``train.fit_network`` on the prepared
    shards (no cache, shuffle buffer scaled to the data as in ``order``) with the log-mel teacher, against the same
    training without one; ``--distill-steps`` steps per epoch, ``--distill-epochs`` epochs, notes/s from the
    history's ``epoch_seconds`` of every epoch after the first (tracing), median over the epochs of ``--repeats``
    runs."""
    from .. import train
    b = args.batch_size
    report.out(f"\n[distill] waveform CNN, batch {b}, {args.distill_epochs} epochs of {args.distill_steps} steps on "
               f"prepared shards: with and without the log-mel teacher")
    prep = wd.prepared()
    teacher_dir = wd.weights()          # untrained networks: the cost of a step does not depend on the weights
    buf = max(1, round(TrainParams().shuffle_buffer * wd.n / FULL_NSYNTH_TRAIN_NOTES))    # scaled as in `order`
    p = dataclasses.replace(TrainParams(), batch_size=b, epochs=args.distill_epochs, shuffle_buffer=buf,
                            early_stopping_patience=args.distill_epochs + 1)
    runs = {"waveform CNN training step, no teacher (prepared shards)": None,
            "distillation stage: + log-mel teacher (prepared shards)": teacher_dir}
    seconds, peaks, deltas = ({k: [] for k in runs} for _ in range(3))
    for _ in range(args.repeats):
        for label, teacher in runs.items():
            out = os.path.join(wd.root, "distill-train")
            shutil.rmtree(out, ignore_errors=True)
            with PeakMemory() as pm, contextlib.redirect_stdout(io.StringIO()):
                hist = train.fit_network("waveform", prep, None, out, p, teacher=teacher,
                                         run=train.RunOptions(steps_per_epoch=args.distill_steps, cache=False,
                                                              verbose=0))
            seconds[label] += hist["epoch_seconds"][1:]
            peaks[label].append(pm.peak)
            deltas[label].append(pm.delta)
    rows = {label: Row("distill", label, args.distill_steps * b, statistics.median(seconds[label]),
                       max(peaks[label]), max(deltas[label]), runs=len(seconds[label]),
                       note=f"median of {len(seconds[label])} epochs of {args.distill_steps} steps")
            for label in runs}
    plain, distilled = rows.values()
    distilled.ratio = distilled.notes_per_s / plain.notes_per_s
    for row in rows.values():
        report.add(row)


def against_table(report: Report, path: str) -> str:
    """Each case of this run against the same case (section and name) in an earlier run's ``--json``."""
    with open(path) as fh:
        then = {(r["section"], r["name"]): r for r in json.load(fh)["rows"]}
    head = f"{'section':9s} {'case':62s} {'then n/s':>9s} {'now n/s':>9s} {'now/then':>9s}"
    lines = [f"against {path}:", head, "-" * len(head)]
    for r in report.rows:
        old = then.get((r.section, r.name))
        if not r.notes or old is None or not old.get("notes_per_s"):
            continue
        was = float(old["notes_per_s"])
        lines.append(f"{r.section:9s} {r.name[:62]:62s} {_num(was):>9s} {_num(r.notes_per_s):>9s} "
                     f"{'x' + format(r.notes_per_s / was, '.2f') if was == was and was > 0 else '-':>9s}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- memory
def section_memory(report: Report, wd: Workdir, args) -> None:
    from .. import data, evaluate, models
    n = args.eval_notes
    report.out(f"\n[memory] evaluate a {n}-note TFRecord: streamed vs. all in RAM "
               f"({n * AUDIO.num_samples * 4 / 1e9:.2f} GB as float32)")
    rec = wd.tfrecord(n)
    cases = []
    for name in NETWORKS:
        model = models.build_model(name)
        model.predict_on_batch(np.zeros((2, AUDIO.num_samples), np.float32))
        cases.append((f"{name}: evaluate.predict_source (streams batches of {args.batch_size})",
                      lambda model=model: len(evaluate.predict_source(model, rec, args.batch_size).labels)))

    def in_ram() -> int:
        audio, _ = data.load_arrays(rec)
        return len(audio)
    cases.append(("for contrast: data.load_arrays (whole split in RAM)", in_ram))
    measure(report, "memory", cases, 1,
            notes={c[0]: f"float32 audio of the split: {n * AUDIO.num_samples * 4 / MB:,.0f} MB" for c in cases})


# ----------------------------------------------------------------------------------------------- scale
def _drop_page_cache(files: list[str]) -> None:
    """Evict these files from the page cache (POSIX_FADV_DONTNEED), so the next read comes from disk."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def section_scale(report: Report, wd: Workdir, args) -> None:
    from .. import batches, prepare
    sizes = sorted(float(s) for s in args.scale_gb.split(","))
    per_note = 2 * AUDIO.num_samples + 400
    shard_bytes = 64 * MB
    total_notes = int(max(sizes) * 1e9 / per_note)
    shards = max(1, math.ceil(total_notes * per_note / shard_bytes))
    usage = shutil.disk_usage(wd.root)
    if usage.free < max(sizes) * 1e9 * 1.3 + 1e9:
        raise RuntimeError(f"--scale-gb {args.scale_gb}: only {usage.free / 1e9:.1f} GB free under {wd.root}")
    report.out(f"\n[scale] {total_notes:,} notes of prepared shards ({max(sizes):g} GB, {shards} shards); "
               f"epoch reads at {', '.join(f'{s:g}' for s in sizes)} GB, page cache dropped before cold epochs")
    full = os.path.join(wd.root, "scale-full")
    t0 = time.perf_counter()
    notes = ((m, prepare.quantize(a)) for m, a in _as_elements(generated_notes(total_notes, seed=21)))
    with PeakMemory() as pm:
        prepare.prepare_elements(notes, full, shards, seed=1, source="generated", log=None)
    report.add(Row("scale", f"write {total_notes:,} notes as {shards} prepared shards (generate+prepare)",
                   total_notes, time.perf_counter() - t0, pm.peak, pm.delta))
    shard_files = sorted(glob.glob(os.path.join(full, "nsynth-prepared-*.tfrecord")))
    for size in sizes:
        k = max(1, round(len(shard_files) * size / max(sizes)))
        sub = os.path.join(wd.root, f"scale-{size:g}gb")
        os.makedirs(sub, exist_ok=True)
        for f in shard_files[:k]:
            os.symlink(f, os.path.join(sub, os.path.basename(f)))
        for f in (prepare.PREPARED_MARKER, prepare.STATS_FILE):
            shutil.copy(os.path.join(full, f), sub)
        nbytes = sum(os.path.getsize(f) for f in shard_files[:k])
        for mode in ("cold", "warm"):
            if mode == "cold":
                _drop_page_cache(shard_files[:k])
            ds = batches.training_dataset(sub, batch_size=args.batch_size, seed=0, cache=False,
                                       shuffle_buffer=TrainParams().shuffle_buffer)

            def epoch(ds=ds) -> int:
                n = 0
                for audio, _ in ds:
                    n += int(audio.shape[0])
                return n
            row = measure(report, "scale", [(f"epoch read {nbytes / 1e9:.2f} GB ({k} shards), {mode} cache",
                                            epoch)], 1)
            r = next(iter(row.values()))
            r.note = f"{nbytes / r.seconds / MB:,.0f} MB/s"


def _as_elements(notes):
    for meta, audio in notes:
        yield schema.metadata_element(meta, audio), audio


# ----------------------------------------------------------------------------------------------- machine
def machine_info() -> dict:
    import keras
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_model": _cpu_model(), "logical_cpus": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "ram_gb": _ram_gb(), "keras": keras.__version__, "keras_backend": keras.backend.backend(),
            "numpy": np.__version__, "nice": os.nice(0) if hasattr(os, "nice") else None,
            "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    for mod in ("tensorflow", "jax", "librosa"):
        if mod in sys.modules:
            info[mod] = getattr(sys.modules[mod], "__version__", "?")
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _ram_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------------------------- CLI
RUNNERS = {"pipeline": section_pipeline, "inference": section_inference, "predict": section_predict,
           "train": section_train, "shuffle": section_shuffle, "memory": section_memory, "scale": section_scale,
           "order": section_order, "feed": section_feed, "distill": section_distill}


def run(args, out=print) -> Report:
    sections = DEFAULT_SECTIONS if not args.only else tuple(s.strip() for s in args.only.split(","))
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"bench: unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    if args.backend_agnostic and set(sections) != {"train"}:
        raise SystemExit("bench: --backend-agnostic runs the train section only (--only train)")
    args.networks = [n.strip() for n in args.networks.split(",")]
    report = Report(out)
    report.info = machine_info()
    report.info["sections"] = list(sections)
    report.info["args"] = {k: v for k, v in vars(args).items() if k != "func"}
    out(f"bench: {report.info['cpu_model']}, {report.info['cpus_usable']} CPU(s), {report.info['ram_gb']} GB RAM, "
        f"keras {report.info['keras']} ({report.info['keras_backend']}), load average "
        f"{' '.join(f'{x:.2f}' for x in report.info['loadavg_start'] or ())}")
    own_dir = args.workdir is None
    root = args.workdir or tempfile.mkdtemp(prefix="nsynth-bench-")
    os.makedirs(root, exist_ok=True)
    wd = Workdir(root, args.notes, args.batch_size, out)
    try:
        for s in sections:
            RUNNERS[s](report, None if args.backend_agnostic else wd, args)
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report.info.update({k: v for k, v in machine_info().items() if k in ("tensorflow", "jax", "librosa")})
    report.info["loadavg_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    report.info["tensorflow_imported"] = sys.modules.get("tensorflow") is not None
    if args.backend_agnostic and report.info["keras_backend"] != "tensorflow" and \
            report.info["tensorflow_imported"]:
        out("warning: TensorFlow was imported on the --backend-agnostic path")
    out("\n" + report.table())
    out(f"\nload average at start {report.info['loadavg_start']}, at end {report.info['loadavg_end']}")
    if args.against:
        out("\n" + against_table(report, args.against))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_json(), fh, indent=1, default=str)
        out(f"wrote {args.json}")
    return report


# plain text: --help prints it as it is
DESCRIPTION = ("Speed and memory of the project, measured side by side in one run on the same generated notes, "
               "the cases of a section interleaved over --repeats rounds, so the printed ratios hold even on a "
               "busy machine.")


def add_parser(sub):
    ap = sub.add_parser("bench", help="speed and memory benchmark (side-by-side ratios, one run)",
                        description=DESCRIPTION)
    _add_arguments(ap)
    ap.set_defaults(func=_main)


def _add_arguments(ap):
    ap.add_argument("--only", default=None, help=f"comma-separated sections of {', '.join(SECTIONS)} "
                                                 f"(default: {','.join(DEFAULT_SECTIONS)})")
    ap.add_argument("--notes", type=int, default=2048, help="notes in the generated data sets")
    ap.add_argument("--batch-size", type=int, default=64,
                    help="notes per batch in every section but train (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved rounds per section (median)")
    ap.add_argument("--networks", default=",".join(NETWORKS), help="for the train section")
    ap.add_argument("--train-batch-size", type=int, default=TrainParams().batch_size,
                    help="notes per batch in the train section (default: %(default)s, as training)")
    ap.add_argument("--train-steps", type=int, default=6, help="timed training steps per network")
    ap.add_argument("--warmup-steps", type=int, default=2, help="untimed steps first (tracing, XLA compile)")
    ap.add_argument("--train-xla", choices=("both", "on", "off", "auto"), default="both",
                    help="TensorFlow on CPU: time training with XLA off and on (default both)")
    ap.add_argument("--mixed-precision", choices=("auto", "on", "off"), default="auto",
                    help="mixed_float16 for the train section (auto: on with a GPU)")
    ap.add_argument("--backend-agnostic", action="store_true",
                    help="train section on synthetic numpy batches, no TensorFlow import (KERAS_BACKEND=jax)")
    ap.add_argument("--eval-notes", type=int, default=NSYNTH_TEST_NOTES, help="notes for the memory section")
    ap.add_argument("--order-epochs", type=int, default=16, help="training epochs per run of the order section")
    ap.add_argument("--order-repeats", type=int, default=2, help="pre-shuffled orders trained in the order section")
    ap.add_argument("--order-seed", type=int, default=TrainParams().seed, help="training seed of the order section")
    ap.add_argument("--distill-steps", type=int, default=8, help="training steps per epoch in the distill section")
    ap.add_argument("--distill-epochs", type=int, default=4, help="epochs per training run in the distill section")
    ap.add_argument("--against", default=None, metavar="OLD.json",
                    help="an earlier run's --json: print each case's notes/s against it (now / then)")
    ap.add_argument("--scale-gb", default="0.5,1,2,4", help="prepared-shard sizes for the scale section (GB)")
    ap.add_argument("--workdir", default=None, help="folder for generated data (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the generated data")
    ap.add_argument("--json", default=None, help="also write the results as JSON")


def _main(args):
    run(args)
    return 0


def main(argv=None, out=print) -> int:
    """``python -m nsynth_cnn.tools.bench ...`` (the same options), without loading the other commands."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m nsynth_cnn.tools.bench", description=DESCRIPTION)
    _add_arguments(ap)
    run(ap.parse_args(argv), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
