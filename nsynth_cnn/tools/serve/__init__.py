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
HTTP 4xx status. An upload is kept in memory (it is at most ``--max-upload-mb``) and never written to disk under its
name, so nothing is left behind even if the server dies mid-decode (a format only audioread/ffmpeg can decode goes
through an unnamed temporary file, which the OS removes with the process). Decoding runs inside the compute lock,
one upload at a time, and reads only the first ``data.MAX_DECODE_SECONDS`` (block by block, mixed to mono as it
goes), so a small, highly compressed file cannot blow up memory.
Weights are loaded lazily from ``<weights>/<name>_cnn.keras`` and reloaded when the file changes, so the
page can run while a model is still training; a missing file is reported on the page with the command
that makes it.
"""
from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import time
from typing import Any

import numpy as np

from ...data import DataError, load_audio, read_examples_json
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
    """Loads ``<weights_dir>/<name>_cnn.keras`` on first use; reloads when the file changes on disk."""

    def __init__(self, weights_dir: str):
        self.weights_dir = weights_dir
        self._cache: dict[str, tuple[Any, Any]] = {}   # name -> (file stamp, model)
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
            try:
                model = load_model_file(path)
            except Exception as err:  # noqa: BLE001 - any load failure is reported on the page
                log.exception("cannot load %s", path)
                return None, (f"Cannot load {path} ({type(err).__name__}: {str(err)[:200]}). The file may be "
                              f"incomplete (still being written?) or from another version; re-train with "
                              f"`{train_command(name, self.weights_dir)}`.")
            self._cache[name] = (stamp, model)
            return model, None


def predict_probabilities(model, audio: np.ndarray) -> np.ndarray:
    """Softmax output (10,) of ``model`` for one 64,000-sample waveform (inference mode)."""
    out = model(np.asarray(audio, np.float32)[None, :], training=False)
    return np.asarray(out, np.float64)[0]


def log_mel_image(audio: np.ndarray, logmel_model=None):
    """``(image, layer)``: the (frames, mels) image the log-mel CNN sees, made by its own ``log_mel`` layer on
    the peak-normalised note. Without a loaded log-mel model, the layer the model builder uses
    (:func:`nsynth_cnn.models.log_mel_layer`, the settings it is trained with)."""
    from ... import features as F
    from ...models import front_end, log_mel_layer
    layer = front_end(logmel_model, "log_mel") if logmel_model is not None else None
    layer = layer or log_mel_layer()
    x = F.PeakNormalize()(np.asarray(audio, np.float32)[None, :])
    return np.asarray(layer(x))[0, :, :, 0], layer


def describe_log_mel(layer) -> str:
    return (f"{layer.sample_rate / 1000:g} kHz audio, {layer.window_length}-sample Hann windows every "
            f"{layer.hop_length} samples, {layer.num_mel_bins} mel bins from {layer.min_hz:g} Hz to "
            f"{layer.max_hz / 1000:g} kHz, {layer.top_db:g} dB range below the note's peak")


# ----------------------------------------------------------------------------------------------- plots
def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def waveform_png(audio: np.ndarray) -> str:
    from matplotlib.figure import Figure
    t = np.arange(audio.shape[0]) / AUDIO.sample_rate_hz
    fig = Figure(figsize=(9.0, 2.2), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(t, audio, lw=0.5, color="#1f5fa8")
    ax.set_xlim(0, AUDIO.note_seconds)
    lim = max(1e-3, float(np.max(np.abs(audio)))) * 1.05
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("time in the classified clip (s)")
    ax.set_ylabel("amplitude")
    ax.grid(alpha=0.3)
    return _png(fig)


def _hz_to_mel(f):
    return 2595.0 * np.log10(1.0 + np.asarray(f, np.float64) / 700.0)   # HTK, as keras.layers.MelSpectrogram


def logmel_png(img: np.ndarray, layer) -> str:
    """Plot a (frames, mels) log-mel image: time across, mel bins up, Hz ticks, colour bar in dB re. peak."""
    from matplotlib.figure import Figure
    frames, mels = img.shape
    hop_s = layer.hop_length / layer.sample_rate
    fig = Figure(figsize=(9.0, 3.0), layout="constrained")
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
    return _png(fig)


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


def analyse(store: ModelStore, lock, audio: np.ndarray, *, true_family: str | None) -> dict:
    """Everything the page shows about one note: both networks' charts, its waveform, log-mel image and player."""
    t0 = time.perf_counter()
    with lock:
        loaded = {name: store.get(name) for name in MODEL_NAMES}
        charts = [probability_chart(name, model, problem, audio, true_family)
                  for name, (model, problem) in loaded.items()]
        img, layer = log_mel_image(audio, loaded["logmel"][0])
    return {"charts": charts, "waveform_png": waveform_png(audio), "logmel_png": logmel_png(img, layer),
            "logmel_settings": describe_log_mel(layer), "logmel_from_model": loaded["logmel"][0] is not None,
            "audio_uri": wav_data_uri(audio), "true_family": true_family,
            "seconds": f"{time.perf_counter() - t0:.2f}"}


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
            with compute_lock:
                audio, info = _decode_upload(upload, name, app.config.get("UPLOAD_TMPDIR"))
        except UploadError as err:
            return page(err.status, error=err.message)
        result = analyse(store, compute_lock, audio, true_family=None)
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
            audio = load_audio(os.path.join(sample_dir, "audio", f"{note}.wav"), context="NSynth note")
        except DataError as err:
            return page(404, error=f"The sample note cannot be read: {err}")
        result = analyse(store, compute_lock, audio, true_family=family)
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
