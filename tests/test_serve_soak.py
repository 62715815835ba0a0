"""The web page's memory stays bounded (issue 28): a 500-upload soak of the real server, and the mechanisms.

The soak (``@pytest.mark.slow``, about 2 minutes on 2 cores) starts ``python -m nsynth_cnn.tools serve`` in a
subprocess with the shipped weights (untrained saved networks of the same architecture when they are absent) and
sends it 500 short uploads, part of them 4 at a time (:mod:`nsynth_cnn.tools.serve.soak`). Before the fix the
server grew by about 2.6 MB and several font files per 10 uploads (plots drawn on werkzeug's per-request
threads, new figures each time); the last 200 uploads must now add < 20 MB resident and no open file.
The other tests check the mechanisms in-process, in seconds.
"""
from __future__ import annotations

import base64
import threading

import numpy as np
import pytest
from conftest import ROOT, SR, tone


def _open_font_files() -> list[str]:
    """Paths of this process's open font file descriptors (one path per descriptor)."""
    psutil = pytest.importorskip("psutil")
    return sorted(f.path for f in psutil.Process().open_files() if f.path.lower().endswith((".ttf", ".otf", ".ttc")))


def test_waveform_envelope_keeps_each_columns_extremes():
    from nsynth_cnn.tools import serve
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(64_000) * np.linspace(0.01, 0.9, 64_000)).astype(np.float32)
    t, y = serve.waveform_envelope(audio, columns=1000)
    assert t.shape == y.shape == (2000,)
    cols = audio.reshape(1000, 64)
    np.testing.assert_array_equal(y[0::2], cols.min(axis=1))
    np.testing.assert_array_equal(y[1::2], cols.max(axis=1))
    assert y.min() == audio.min() and y.max() == audio.max()
    assert 0 < t[0] < t[-1] < 4.0 and np.all(np.diff(t) >= 0)
    t, y = serve.waveform_envelope(audio[:700], columns=1000)     # fewer samples than columns: every sample
    assert t.shape == (1400,) and np.array_equal(y[0::2], audio[:700])


def test_figures_are_made_once_and_redrawn():
    """The page's two figures are reused for every note (no figure per request); the log-mel one is remade only
    when the log-mel settings change. Both still show the new data."""
    from nsynth_cnn.models import log_mel_layer
    from nsynth_cnn.params import LogMelParams
    from nsynth_cnn.tools import serve
    plots = serve.Plots()
    loud, quiet = tone(440.0), tone(440.0, amp=0.002)
    png = [plots.waveform_png(loud)]
    fig, ax, line = plots._waveform
    png.append(plots.waveform_png(quiet))
    assert plots._waveform[0] is fig and list(ax.lines) == [line] and ax.get_ylim()[1] == pytest.approx(0.0021, rel=0.01)
    assert png[0] != png[1] and all(base64.b64decode(p).startswith(b"\x89PNG") for p in png)
    layer = log_mel_layer()
    img = np.linspace(-1, 1, 126 * 64, dtype=np.float32).reshape(126, 64)
    first = plots.logmel_png(img, layer)
    mel_fig = plots._logmel[1]
    assert plots.logmel_png(-img, layer) != first and plots._logmel[1] is mel_fig
    other = log_mel_layer(LogMelParams(num_mel_bins=32))
    plots.logmel_png(img[:, :32], other)
    assert plots._logmel[1] is not mel_fig and len(plots._logmel[1].axes) == 2     # image + colour bar


def test_all_work_runs_on_one_thread_and_fonts_are_opened_once(tmp_path, monkeypatch):
    """8 uploads from 8 request threads: decoding, inference and plotting all run on the app's one worker
    thread, so matplotlib (which caches fonts per thread) opens its font files once, not once per request."""
    import io

    import soundfile as sf

    from nsynth_cnn.tools import serve
    app = serve.create_app(weights_dir=str(tmp_path / "no-weights"), sample_dir=str(tmp_path / "no-sample"))
    worker = app.extensions["nsynth_worker"]
    ran_on = []
    real = serve.analyse

    def spy(*args, **kwargs):
        ran_on.append(threading.get_ident())
        return real(*args, **kwargs)

    wav = io.BytesIO()
    sf.write(wav, tone(330.0, seconds=0.5), SR, format="WAV", subtype="PCM_16")
    blob = wav.getvalue()
    statuses = []

    def request():
        resp = app.test_client().post("/classify", data={"audio": (io.BytesIO(blob), "a.wav")},
                                      content_type="multipart/form-data")
        statuses.append(resp.status_code)

    worker.run(serve.Plots().waveform_png, tone(220.0))       # loads the fonts on the worker thread
    before = _open_font_files()
    monkeypatch.setattr(serve, "analyse", spy)
    threads = [threading.Thread(target=request) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(300)
    assert statuses == [200] * 8
    assert len(set(ran_on)) == 1 and ran_on[0] == worker.run(threading.get_ident) != threading.get_ident()
    after = _open_font_files()
    assert len(after) <= len(before), f"font files opened by the requests: {before} -> {after}"


def test_models_are_traced_once(tmp_path):
    """The networks and the log-mel front end are called on one fixed (1, 64000) float32 batch: each compiled
    predict function is traced when the model is loaded and never again (a retrace per call grows memory)."""
    import keras

    from nsynth_cnn import models
    from nsynth_cnn.tools import serve
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tracing counts are TensorFlow's")
    model = models.build_model("logmel", aug=None)
    model.save(str(tmp_path / "logmel_cnn.keras"))
    store = serve.ModelStore(str(tmp_path))
    loaded, problem = store.get("logmel")
    assert problem is None
    front, _ = store.front_end(loaded)
    assert store.front_end(loaded)[0] is front                     # kept with the model, not rebuilt
    for n in (64_000, 64_000, 30_000):
        serve.predict_probabilities(loaded, tone(200.0 + n / 1000)[:n])
        serve.log_mel_image(tone(300.0)[:n], front=store.front_end(loaded))
    assert loaded.predict_function.experimental_get_tracing_count() == 1
    assert front.predict_function.experimental_get_tracing_count() == 1


@pytest.mark.slow
def test_soak_500_uploads_memory_is_bounded(tmp_path):
    """500 uploads to the real server in a subprocess (uploads 100-300 and 400-460 four at a time): the last 200
    add < 20 MB resident and no open file descriptor; every answer is the page (200, or 400 for the bad files)."""
    pytest.importorskip("psutil")
    from nsynth_cnn.tools.serve import soak
    weights = ROOT / "weights"
    if not all((weights / f"{n}_cnn.keras").is_file() for n in ("waveform", "logmel")):
        from nsynth_cnn import models
        weights = tmp_path / "weights"
        weights.mkdir()
        for name in models.MODEL_NAMES:
            models.build_model(name).save(str(weights / f"{name}_cnn.keras"))
    sample = ROOT / "data" / "nsynth-sample"
    res = soak.soak(str(weights), str(sample), uploads=500, checkpoints=(300,))
    by = {p["uploads"]: p for p in res["points"]}
    print(res["points"])
    names = [name for name, _ in soak.upload_files()]
    bad = sum(1 for i in range(500) if names[i % len(names)] in ("notes.txt", "silence.wav"))
    samples = 50 if soak.sample_note(str(sample)) else 0
    assert res["statuses"] == {200: 500 - bad + samples, 400: bad}, res
    assert res["last_window"] == (300, 500)
    assert by[500]["rss_mb"] - by[300]["rss_mb"] < 20.0, res["points"]
    assert by[500]["files"] <= by[300]["files"] and by[500]["fds"] <= by[300]["fds"], res["points"]
