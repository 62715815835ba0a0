"""Web page to try both classifiers on any recording: ``python -m nsynth_cnn.tools serve [--host --port]``.

A small Flask app (:func:`create_app`) on 127.0.0.1 by default. Upload an audio file (wav, flac, mp3, ogg;
any sample rate, mono or stereo) or pick a note of the NSynth sample folder; the page shows

* the 4 s the networks classify (waveform plot and an audio player),
* the log-mel image the log-mel CNN sees, computed by the model's own ``log_mel`` layer,
* for each network a bar chart of the 10 family probabilities (and the true family for a sample note).

What is classified: an upload is decoded, averaged to mono, resampled to 16 kHz, its leading silence is
skipped (onset = first sample reaching 1 % of the peak, minus 10 ms), and the next 4 s are kept (shorter
recordings are zero padded). Sample notes are used as stored (NSynth notes are 4 s from their onset).

Bad uploads (not audio, empty, too big, unreadable, silent, absurd headers) get a message on the page with an
HTTP 4xx status. An upload is read into memory (it is at most ``--max-upload-mb``; werkzeug spools a request body
over 500 KB through an unnamed temporary file, gone when the request ends) and decoded from memory, never written to
disk under its name, so nothing is left behind even if the server dies mid-decode (a format only audioread/ffmpeg
can decode goes through an unnamed temporary file, which the OS removes with the process). Decoding reads only the
first ``MAX_DECODE_SECONDS`` (block by block, mixed to mono as it goes), so a small, highly compressed file
cannot blow up memory.
Weights are loaded lazily from ``<weights>/<name>_cnn.keras`` and reloaded when the file changes, so the
page can run while a model is still training; a missing file is reported on the page with the command
that makes it.

Memory is bounded (``python -m nsynth_cnn.tools.serve.soak``; docs/testing.md): decoding, inference and plotting
run on one worker thread (:class:`Worker`), one request at a time, so matplotlib, which caches fonts per thread,
opens them once; each network is loaded once and called with ``predict_on_batch`` on one fixed ``(1, 64000)``
float32 batch (one compiled function, traced at load); the two figures are made once and redrawn (:class:`Plots`).
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np


from ...audio import load_audio
from ...data import read_examples_json
from ...schema import DataError
from ...weights import DEFAULT_DIR as DEFAULT_WEIGHTS_DIR
from ...weights import MODEL_NAMES, load_model_file, train_command, weights_path
from ...params import AUDIO, FAMILIES, NSYNTH_FAMILY_NAMES, SYNTH_LEAD_ID, nsynth_family_to_label

log = logging.getLogger(__name__)

MODEL_TITLES = {"waveform": "Waveform CNN", "logmel": "Log-mel CNN"}
DEFAULT_SAMPLE_DIR = os.path.join("data", "nsynth-sample")
DEFAULT_MAX_UPLOAD_MB = 20
UPLOAD_ACCEPT = "audio/*,.wav,.flac,.mp3,.ogg,.oga,.opus,.aif,.aiff"


class UploadError(Exception):
    """A request the page answers with a message and a 4xx status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


# ----------------------------------------------------------------------------------------------- models
class ModelStore:
    """Loads ``<weights_dir>/<name>_cnn.keras`` on first use; reloads when the file changes on disk.

    Holds at most one model per name (a reloaded file replaces the old model) and, with the log-mel CNN, the
    model that computes its log-mel image (:func:`front_end_model`). Each is called once on silence when loaded,
    so its compiled predict function is traced at load time, for the one input shape the page uses."""

    def __init__(self, weights_dir: str):
        self.weights_dir = weights_dir
        self._cache: dict[str, tuple[Any, Any, Any]] = {}   # name -> (file stamp, model, front end or None)
        self._lock = threading.Lock()

    def get(self, name: str):
        """``(model, None)`` or ``(None, problem message)``."""
        path = weights_path(self.weights_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            self._cache.pop(name, None)
            return None, (f"No weights for the {MODEL_TITLES[name]}: {path} does not exist. Train it with "
                          f"`{train_command(name, self.weights_dir)}` (or copy a trained {name}_cnn.keras "
                          f"into {self.weights_dir}/), then reload this page.")
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(name)
            if cached and cached[0] == stamp:
                return cached[1], None
            self._cache.pop(name, None)      # the old model goes before the new one is loaded
            try:
                model = load_model_file(path)
                predict_probabilities(model, np.zeros(AUDIO.num_samples, np.float32))   # trace once, now
                front = front_end_model(model) if name == "logmel" else None
            except Exception as err:  # noqa: BLE001 - any load failure is reported on the page
                log.exception("cannot load %s", path)
                return None, (f"Cannot load {path} ({type(err).__name__}: {str(err)[:200]}). The file may be "
                              f"incomplete (still being written?) or from another version; re-train with "
                              f"`{train_command(name, self.weights_dir)}`.")
            self._cache[name] = (stamp, model, front)
            return model, None

    def front_end(self, logmel_model):
        """``(image model, log_mel layer)`` of ``logmel_model`` (as returned by :meth:`get`), or the default
        front end (:func:`front_end_model`) without one."""
        with self._lock:
            cached = self._cache.get("logmel")
            if logmel_model is not None and cached and cached[1] is logmel_model and cached[2] is not None:
                return cached[2]
        return front_end_model(logmel_model) if logmel_model is not None else default_front_end()


def _batch(audio: np.ndarray) -> np.ndarray:
    """One note as the page's only batch shape, ``(1, 64000)`` float32 (so a compiled function never retraces)."""
    x = np.zeros((1, AUDIO.num_samples), np.float32)
    a = np.asarray(audio, np.float32)[:AUDIO.num_samples]
    x[0, :a.shape[0]] = a
    return x


def predict_probabilities(model, audio: np.ndarray) -> np.ndarray:
    """Softmax output (10,) of ``model`` for one 64,000-sample waveform (inference mode; ``predict_on_batch`` on
    a fixed-shape batch: the model's compiled predict function, traced once)."""
    return np.asarray(model.predict_on_batch(_batch(audio)), np.float64)[0]


def front_end_model(logmel_model=None):
    """``(model, layer)``: a Keras model from a waveform batch to the (batch, frames, mels, 1) image the log-mel CNN
    sees, and its ``log_mel`` layer. With ``logmel_model``: that network's own layers from its input to its
    ``log_mel`` layer (peak normalisation; augmentation layers are identities at inference). Without one, or
    if it has no ``log_mel`` layer: peak normalisation and the layer the model builder uses
    (:func:`nsynth_cnn.models.log_mel_layer`, the settings it is trained with)."""
    import keras

    from ... import features as F
    from ...models import front_end, log_mel_layer
    layer = front_end(logmel_model, "log_mel") if logmel_model is not None else None
    if layer is not None:
        model = keras.Model(logmel_model.inputs, layer.output)
    else:
        layer = log_mel_layer()
        inp = keras.Input((AUDIO.num_samples,), name="waveform")
        model = keras.Model(inp, layer(F.PeakNormalize()(inp)))
    model.predict_on_batch(_batch(np.zeros(AUDIO.num_samples, np.float32)))   # trace once, now
    return model, layer


_default_front_end: tuple | None = None
_default_front_end_lock = threading.Lock()


def default_front_end():
    """:func:`front_end_model` without a log-mel CNN, built once per process."""
    global _default_front_end
    with _default_front_end_lock:
        if _default_front_end is None:
            _default_front_end = front_end_model(None)
        return _default_front_end


def log_mel_image(audio: np.ndarray, logmel_model=None, front=None):
    """``(image, layer)``: the (frames, mels) image the log-mel CNN sees, made by its own layers (peak
    normalisation, ``log_mel``) on the note; ``front`` is a ``(model, layer)`` of :func:`front_end_model` to reuse
    (the page passes the one it keeps with the loaded model). Without a log-mel model, the default front end."""
    if front is None:
        front = front_end_model(logmel_model) if logmel_model is not None else default_front_end()
    model, layer = front
    return np.asarray(model.predict_on_batch(_batch(audio)))[0, :, :, 0], layer


def describe_log_mel(layer) -> str:
    return (f"{layer.sample_rate / 1000:g} kHz audio, {layer.window_length}-sample Hann windows every "
            f"{layer.hop_length} samples, {layer.num_mel_bins} mel bins from {layer.min_hz:g} Hz to "
            f"{layer.max_hz / 1000:g} kHz, {layer.top_db:g} dB range below the note's peak")


# ----------------------------------------------------------------------------------------------- plots
PNG_DPI = 110
WAVEFORM_COLUMNS = 1000      # the waveform plot's min/max envelope: about one column per pixel (9 in x 110 dpi)


def _png(fig) -> str:
    buf = io.BytesIO()   # (zlib level 1: about 15 % larger than the default level 6, and 15-20 ms faster a figure)
    fig.savefig(buf, format="png", dpi=PNG_DPI, pil_kwargs={"compress_level": 1})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def waveform_envelope(audio: np.ndarray, columns: int = WAVEFORM_COLUMNS) -> tuple[np.ndarray, np.ndarray]:
    """``(t, y)`` of a polyline through each column's minimum and maximum (``2 * columns`` points): at the plot's
    resolution the same picture as all the samples, for a fraction of matplotlib's time and memory."""
    audio = np.asarray(audio, np.float32)
    n = audio.shape[0]
    columns = max(1, min(columns, n))
    edges = np.linspace(0, n, columns + 1).astype(int)
    lo, hi = np.minimum.reduceat(audio, edges[:-1]), np.maximum.reduceat(audio, edges[:-1])
    t = np.repeat((edges[:-1] + edges[1:]) / 2 / AUDIO.sample_rate_hz, 2)
    return t, np.column_stack([lo, hi]).ravel()


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)   # HTK, as keras.layers.MelSpectrogram


class Plots:
    """The page's two figures (matplotlib's object API, no pyplot), made once and redrawn with each note's data.

    Not thread-safe: the app uses one from its :class:`Worker` thread. New figures per request took about twice
    the time, and their many small objects (freed only by the cyclic garbage collector) grew the heap. The log-mel
    figure is made again only when the log-mel settings change (another log-mel CNN): one of each at any time."""

    def __init__(self):
        self._waveform = None    # (figure, axes, line)
        self._logmel = None      # (settings, figure, image)

    def waveform_png(self, audio: np.ndarray) -> str:
        """The classified clip's waveform (its min/max envelope, :func:`waveform_envelope`) as base64 PNG."""
        if self._waveform is None:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
            fig = Figure(figsize=(9.0, 2.2), dpi=PNG_DPI, layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            (line,) = ax.plot([], [], lw=0.5, color="#1f5fa8")
            ax.set_xlim(0, AUDIO.note_seconds)
            ax.set_xlabel("time in the classified clip (s)")
            ax.set_ylabel("amplitude")
            ax.grid(alpha=0.3)
            self._waveform = fig, ax, line
        fig, ax, line = self._waveform
        line.set_data(*waveform_envelope(audio))
        lim = max(1e-3, float(np.max(np.abs(audio)))) * 1.05
        ax.set_ylim(-lim, lim)
        return _png(fig)

    def logmel_png(self, img: np.ndarray, layer) -> str:
        """A (frames, mels) log-mel image: time across, mel bins up, Hz ticks, colour bar in dB re. peak."""
        frames, mels = img.shape
        settings = (frames, mels, layer.hop_length, layer.sample_rate, layer.min_hz, layer.max_hz, layer.top_db)
        if self._logmel is None or self._logmel[0] != settings:
            self._logmel = None
            self._logmel = settings, *self._logmel_figure(img, layer)
        _, fig, im = self._logmel
        im.set_data(img.T)
        return _png(fig)

    @staticmethod
    def _logmel_figure(img: np.ndarray, layer):
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        frames, mels = img.shape
        hop_s = layer.hop_length / layer.sample_rate
        fig = Figure(figsize=(9.0, 3.0), dpi=PNG_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        im = ax.imshow(img.T, origin="lower", aspect="auto", cmap="magma", vmin=-1.0, vmax=1.0,
                       extent=(-hop_s / 2, (frames - 0.5) * hop_s, -0.5, mels - 0.5), interpolation="nearest")
        # mel bin i is centred on the (i+1)-th of mels+2 points evenly spaced in mel between min_hz and max_hz
        lo, hi = _hz_to_mel(layer.min_hz), _hz_to_mel(layer.max_hz)
        ticks_hz = [f for f in (100, 500, 1000, 2000, 4000) if layer.min_hz <= f <= layer.max_hz]
        pos = [(_hz_to_mel(f) - lo) / (hi - lo) * (mels + 1) - 1 for f in ticks_hz]
        ax.set_yticks(pos, [f"{f // 1000}k" if f >= 1000 else str(f) for f in ticks_hz])
        ax.set_ylim(-0.5, mels - 0.5)
        ax.set_xlabel("time (s)")
        ax.set_ylabel(f"frequency (Hz, {mels} mel bins)")
        cb = fig.colorbar(im, ax=ax, pad=0.01)
        cb.set_ticks([-1.0, -0.5, 0.0, 0.5, 1.0], labels=[f"{(v - 1) * layer.top_db / 2:.0f}" for v in
                                                          (-1.0, -0.5, 0.0, 0.5, 1.0)])
        cb.set_label("dB re. note peak")
        # every label of this figure is fixed by the settings: lay it out once, then keep that layout
        fig.draw_without_rendering()
        fig.set_layout_engine("none")
        return fig, im


def wav_data_uri(audio: np.ndarray) -> str:
    import soundfile as sf
    buf = io.BytesIO()
    sf.write(buf, np.clip(audio, -1.0, 1.0), AUDIO.sample_rate_hz, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------- sample notes
def sample_notes(sample_dir: str) -> tuple[list[dict], str | None]:
    """Notes of an NSynth JSON+wav folder as ``[{note, family}]`` (synth_lead left out), or a problem message."""
    if not any(os.path.isfile(os.path.join(sample_dir, f)) for f in ("examples.json", "notes.csv")):
        return [], (f"The sample notes are not available: {os.path.join(sample_dir, 'examples.json')} does "
                    f"not exist. Put an NSynth JSON+wav folder (examples.json + audio/*.wav) there, or start "
                    f"the page with --sample FOLDER. Uploads work without it.")
    try:
        meta = read_examples_json(sample_dir)
    except DataError as err:
        return [], f"The sample notes cannot be read: {err}"
    notes = []
    for note in sorted(meta):
        m = meta[note]
        fam = m.get("instrument_family") if isinstance(m, dict) else None
        if not isinstance(fam, int) or fam == SYNTH_LEAD_ID or not 0 <= fam < len(NSYNTH_FAMILY_NAMES):
            continue
        notes.append({"note": note, "family": FAMILIES[nsynth_family_to_label(fam)]})
    if not notes:
        return [], f"{sample_dir}/examples.json lists no notes of the 10 families."
    return notes, None


# ----------------------------------------------------------------------------------------------- app
def code(text: str):
    """Escape a message and show `back-quoted` parts as <code>."""
    from markupsafe import Markup
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(Markup.escape(text))))


def probability_chart(name: str, model, problem: str | None, audio: np.ndarray, true_family: str | None) -> dict:
    """One network's bar chart of the 10 family probabilities (or the reason it cannot be shown)."""
    chart = {"name": name, "title": MODEL_TITLES[name], "problem": code(problem) if problem else None}
    if model is None:
        return chart
    probs = predict_probabilities(model, audio)
    top = int(np.argmax(probs))
    return {**chart, "top": FAMILIES[top], "top_pct": f"{probs[top] * 100:.1f}",
            "correct": None if true_family is None else FAMILIES[top] == true_family,
            "rows": [{"family": fam, "pct": f"{p * 100:.1f}", "width": f"{p * 100:.2f}", "top": i == top,
                      "true": fam == true_family} for i, (fam, p) in enumerate(zip(FAMILIES, probs))]}


def analyse(store: ModelStore, plots: Plots, audio: np.ndarray, *, true_family: str | None) -> dict:
    """Everything the page shows about one note: both networks' charts, its waveform, log-mel image and player.
    (The app runs it on its :class:`Worker`, with the worker's :class:`Plots`.)"""
    t0 = time.perf_counter()
    loaded = {name: store.get(name) for name in MODEL_NAMES}
    charts = [probability_chart(name, model, problem, audio, true_family)
              for name, (model, problem) in loaded.items()]
    img, layer = log_mel_image(audio, front=store.front_end(loaded["logmel"][0]))
    return {"charts": charts, "waveform_png": plots.waveform_png(audio),
            "logmel_png": plots.logmel_png(img, layer), "logmel_settings": describe_log_mel(layer),
            "logmel_from_model": loaded["logmel"][0] is not None, "audio_uri": wav_data_uri(audio),
            "true_family": true_family, "seconds": f"{time.perf_counter() - t0:.2f}"}


class Worker:
    """One long-lived thread that runs every decode, inference and plot of the app, one at a time.

    werkzeug's threaded server runs each request on a new thread; matplotlib caches FreeType fonts per thread id
    (up to 64, each an open file), so plotting on request threads left font files open and their memory held.
    On this one thread fonts are loaded once, and its :class:`Plots` are reused. ``lock`` is held while a job
    runs."""

    def __init__(self, lock: threading.Lock | None = None):
        self.lock = lock or threading.Lock()
        self.plots = Plots()          # used on the worker thread only
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nsynth-serve")

    def run(self, fn, *args, **kwargs):
        """``fn(*args, **kwargs)`` on the worker thread; its result, or its exception raised here."""
        return self._pool.submit(self._job, fn, args, kwargs).result()

    def _job(self, fn, args, kwargs):
        with self.lock:
            return fn(*args, **kwargs)


def create_app(weights_dir: str = DEFAULT_WEIGHTS_DIR, sample_dir: str = DEFAULT_SAMPLE_DIR,
               max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, upload_tmpdir: str | None = None):
    """The Flask app. ``MAX_CONTENT_LENGTH`` (bytes) and ``UPLOAD_TMPDIR`` may be changed in ``app.config``."""
    from flask import Flask, render_template, request

    app = Flask(__name__)
    app.config.update(MAX_CONTENT_LENGTH=int(max_upload_mb * (1 << 20)), UPLOAD_TMPDIR=upload_tmpdir,
                      WEIGHTS_DIR=weights_dir, SAMPLE_DIR=sample_dir)
    store = ModelStore(weights_dir)
    app.extensions["nsynth_models"] = store
    compute_lock = threading.Lock()   # one decode / inference at a time: concurrent uploads cannot multiply memory
    app.extensions["nsynth_compute_lock"] = compute_lock
    worker = Worker(compute_lock)     # ... all on one thread (fonts loaded once)
    app.extensions["nsynth_worker"] = worker

    def limit_text() -> str:
        limit = app.config["MAX_CONTENT_LENGTH"]
        return f"{limit / (1 << 20):.0f} MB" if limit >= (1 << 20) else f"{limit / 1024:.0f} KB"

    def page(status: int = 200, *, error: str | None = None, result: dict | None = None,
             selected_note: str | None = None):
        notes, sample_problem = sample_notes(app.config["SAMPLE_DIR"])
        problems = [store.get(name)[1] for name in MODEL_NAMES]
        html = render_template(
            "page.html", error=code(error) if error else None, result=result, notes=notes,
            sample_problem=sample_problem, weight_problems=[code(p) for p in problems if p],
            selected_note=selected_note, accept=UPLOAD_ACCEPT, limit=limit_text(),
            families=FAMILIES, titles=MODEL_TITLES, seconds=AUDIO.note_seconds, rate=AUDIO.sample_rate_hz)
        return html, status

    @app.get("/")
    def index():
        return page()

    @app.post("/classify")
    def classify():
        try:
            upload = request.files.get("audio")
            if upload is None or not upload.filename:
                raise UploadError("No file was chosen. Pick an audio file (wav, flac, mp3 or ogg), then press "
                                  "Classify.")
            name = os.path.basename(upload.filename.replace("\\", "/"))
            tmpdir = app.config.get("UPLOAD_TMPDIR")
            info, result = worker.run(_classify_upload, store, worker.plots, upload, name, tmpdir)
        except UploadError as err:
            return page(err.status, error=err.message)
        result.update(kind="upload", title=name, info=info)
        return page(result=result)

    @app.get("/sample")
    def sample():
        note = request.args.get("note", "")
        sample_dir = app.config["SAMPLE_DIR"]
        notes, problem = sample_notes(sample_dir)
        if problem:
            return page(404, error=problem)
        family = {n["note"]: n["family"] for n in notes}.get(note)
        if family is None:
            return page(404, error=f"There is no note {note!r} in the sample {sample_dir}; pick one from the "
                                   "list.")
        try:
            path = os.path.join(sample_dir, "audio", f"{note}.wav")
            result = worker.run(_classify_sample, store, worker.plots, path, family)
        except DataError as err:
            return page(404, error=f"The sample note cannot be read: {err}")
        result.update(kind="sample", title=note, info=None)
        return page(result=result, selected_note=note)

    _add_error_pages(app, page, limit_text)
    return app


def _add_error_pages(app, page, limit_text) -> None:
    """Every error (too big, HTTP errors, a bug) answered with the page and one message, never a traceback."""
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_err):
        # (werkzeug's server reads and drops the rest of the body, so the browser gets this page, not a reset)
        return page(413, error=f"The file is too big: uploads are limited to {limit_text()}. Cut out the note "
                               "you want classified (only 4 s are used) or convert it to a compressed format "
                               "(flac, ogg, mp3).")

    @app.errorhandler(HTTPException)
    def http_error(err):
        return page(err.code or 500, error=f"{err.code} {err.name}: {err.description}")

    @app.errorhandler(Exception)
    def server_error(err):
        log.exception("request failed")
        return page(500, error=f"Something went wrong on the server ({type(err).__name__}: {str(err)[:200]}).")


def _classify_upload(store: ModelStore, plots: Plots, upload, name: str, tmpdir: str | None) -> tuple[dict, dict]:
    """``(facts about the file, analysis)`` of an upload (run on the app's :class:`Worker`)."""
    audio, info = _decode_upload(upload, name, tmpdir)
    return info, analyse(store, plots, audio, true_family=None)


def _classify_sample(store: ModelStore, plots: Plots, path: str, family: str) -> dict:
    return analyse(store, plots, load_audio(path, context="NSynth note"), true_family=family)


def _decode_upload(upload, name: str, tmpdir: str | None) -> tuple[np.ndarray, dict]:
    """Upload -> (4-s 16-kHz waveform from the onset, facts about the file). Decoded from memory (``BytesIO``):
    no file named after the upload is written; ``tmpdir`` only holds the unnamed file of the audioread fallback."""
    blob = upload.stream.read()           # at most MAX_CONTENT_LENGTH (werkzeug refuses bigger requests)
    if not blob:
        raise UploadError(f"{name} is empty (0 bytes). Choose a file that holds a recording.")
    info = _audio_info(io.BytesIO(blob), len(blob))
    notes: list[str] = []
    try:
        audio = load_audio(io.BytesIO(blob), name=name, context="upload", reject_silent=True, onset_trim=True,
                           on_warning=notes.append, tmpdir=tmpdir)
    except DataError as err:
        raise UploadError(str(err)) from None
    except Exception as err:  # noqa: BLE001 - decoder crashes are the file's fault, not the server's
        log.warning("decoding %s failed: %r", name, err)
        raise UploadError(f"{name}: could not be decoded as audio ({type(err).__name__}). Use wav, flac, "
                          "ogg or mp3.") from None
    if notes:
        info["warning"] = " ".join(notes)
    return audio, info


def _audio_info(source, size: int) -> dict:
    """Size, and what the header says (length, rate, channels) when libsndfile can read it (a path or file)."""
    info = {"size": f"{size / (1 << 20):.1f} MB" if size >= (1 << 20) else f"{size / 1024:.0f} KB"}
    try:
        import soundfile as sf
        i = sf.info(source)
        info.update(seconds=f"{i.duration:.2f}", rate=f"{i.samplerate:,} Hz",
                    channels={1: "mono", 2: "stereo"}.get(i.channels, f"{i.channels} channels"),
                    long=i.duration > AUDIO.note_seconds)
    except Exception:  # noqa: BLE001 - details are optional (librosa fallback formats)
        pass
    return info


# ----------------------------------------------------------------------------------------------- CLI
def is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


def _main(args) -> int:
    from werkzeug.serving import make_server
    app = create_app(weights_dir=args.weights, sample_dir=args.sample, max_upload_mb=args.max_upload_mb)
    store = app.extensions["nsynth_models"]
    for name in MODEL_NAMES:
        model, problem = store.get(name)
        print(f"{MODEL_TITLES[name]}: " + (f"loaded {weights_path(args.weights, name)}" if model else problem))
    notes, problem = sample_notes(args.sample)
    print(f"sample: {len(notes)} notes from {args.sample}" if notes else problem)
    if not is_loopback(args.host):
        print(f"warning: listening on {args.host} makes the page reachable from other machines; it has no "
              "authentication.")
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as err:
        print(f"error: cannot listen on {args.host}:{args.port} ({err.strerror or err}). Is another server "
              "using that port? Pick another with --port.")
        return 2
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"Serving on http://{shown}:{server.port}/  (Ctrl+C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def add_parser(sub):
    ap = sub.add_parser("serve", help="web page to try both classifiers on any recording",
                        description="Local web page: upload a recording or pick a sample note; shows the "
                                    "waveform, the log-mel image and both networks' family probabilities.")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS_DIR,
                    help="folder holding waveform_cnn.keras and logmel_cnn.keras")
    ap.add_argument("--sample", default=DEFAULT_SAMPLE_DIR,
                    help="NSynth JSON+wav folder (examples.json + audio/) whose notes the page offers")
    ap.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                    help="largest upload accepted, in MB (default: 20)")
    ap.set_defaults(func=_main)
    return ap
