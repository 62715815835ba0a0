"""Web page (``nsynth_cnn.serve``) driven in headless Chromium with Playwright.

The app runs in a background thread on a free loopback port with two tiny *untrained but saved* models
(their output biases are set to distinct, model-specific values so that every family has a clearly
different probability: a page that swaps families or models cannot pass). The tests upload real files and
check that the page shows exactly the probabilities the saved models give, and that every bad upload
gets a 4xx page with a clear message and leaves no file behind.
"""
from __future__ import annotations

import os
import re
import shutil
import threading

import numpy as np
import pytest
import soundfile as sf

from nsynth_cnn.params import FAMILIES, NSYNTH_FAMILY_NAMES

CHROMIUM = os.environ.get("NSYNTH_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT = os.environ.get("NSYNTH_SERVE_SCREENSHOT", "/tmp/serve.png")
SR = 16_000
TIMEOUT_MS = 90_000   # a page load includes TF inference and plotting on a busy 2-core machine


def _have_chromium() -> bool:
    return os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)


def harmonic(seconds: float, rate: int, f0: float = 220.0, decay: float = 1.5, amp: float = 0.6) -> np.ndarray:
    t = np.arange(int(round(seconds * rate))) / rate
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 7) if f0 * h < rate / 2)
    return (amp * np.exp(-decay * t) * x / np.max(np.abs(x))).astype(np.float32)


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    """Tiny saved models, an NSynth JSON+wav sample folder, an upload temp folder and test recordings."""
    import keras

    from nsynth_cnn import models, writers
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("serve")
    weights = root / "weights"
    weights.mkdir()
    rng = np.random.default_rng(0)
    for k, name in enumerate(models.MODEL_NAMES):
        model = models.build_model(name)
        logits = model.get_layer("logits")
        kernel, _ = logits.get_weights()
        bias = rng.permutation(np.linspace(-2.0, 2.0, len(FAMILIES))).astype(np.float32)
        # a larger kernel makes the untrained net's output depend visibly on its input (> 0.1 % moves for the
        # onset trim below); the permuted bias spreads the families over ~1..40 %
        logits.set_weights([kernel * 10.0, bias])
        model.save(str(weights / f"{name}_cnn.keras"))
    sample = root / "sample"
    notes = []
    for i, (fam, pitch) in enumerate([(3, 57), (6, 45), (9, 60)]):   # guitar, organ, synth_lead (not offered)
        name = NSYNTH_FAMILY_NAMES[fam]
        meta = writers.note_metadata(family=name, source="acoustic", instrument=i, pitch=pitch, velocity=100)
        notes.append((meta, harmonic(4.0, SR, f0=440 * 2 ** ((pitch - 69) / 12), decay=0.5 + i)))
    writers.write_jsonwav(str(sample), notes)
    uploads = root / "uploads"
    uploads.mkdir()
    files = root / "files"
    files.mkdir()
    # 6 s, stereo, 44.1 kHz, 0.8 s of silence before the note: resampling, downmix and onset trimming at once
    rate = 44_100
    note = harmonic(5.2, rate, f0=196.0)
    left = np.concatenate([np.zeros(int(0.8 * rate), np.float32), note])
    stereo = np.stack([left, 0.5 * left], axis=1)
    sf.write(str(files / "long stereo note.wav"), stereo, rate, subtype="PCM_16")
    (files / "notes.txt").write_text("These are my notes, not a recording.\n" * 20)
    (files / "empty.wav").write_bytes(b"")
    sf.write(str(files / "silence.wav"), np.zeros(2 * SR, np.float32), SR, subtype="PCM_16")
    (files / "broken.wav").write_bytes(b"RIFF\x24\x08\x00\x00WAVEfmt " + os.urandom(200))
    sf.write(str(files / "big.wav"), harmonic(3.0, rate), rate, subtype="PCM_16")   # ~260 KB
    return {"weights": weights, "sample": sample, "uploads": uploads, "files": files, "notes": notes}


@pytest.fixture(scope="module")
def saved_models(assets):
    import keras

    import nsynth_cnn  # noqa: F401
    return {name: keras.models.load_model(str(assets["weights"] / f"{name}_cnn.keras"))
            for name in ("waveform", "logmel")}


@pytest.fixture(scope="module")
def server(assets):
    from werkzeug.serving import make_server

    from nsynth_cnn.tools.serve import create_app
    app = create_app(weights_dir=str(assets["weights"]), sample_dir=str(assets["sample"]),
                     upload_tmpdir=str(assets["uploads"]))
    srv = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield {"url": f"http://127.0.0.1:{srv.port}", "app": app}
    srv.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def browser():
    if not _have_chromium():
        pytest.skip(f"Chromium not found at {CHROMIUM} (set NSYNTH_CHROMIUM): the page tests need a real browser")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (python package) is not installed")
    pw = sync_api.sync_playwright().start()
    try:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
    except Exception as err:  # noqa: BLE001
        pw.stop()
        pytest.skip(f"cannot start Chromium at {CHROMIUM}: {err}")
    yield b
    b.close()
    pw.stop()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    yield pg
    context.close()


@pytest.fixture
def upload_log(monkeypatch, assets):
    """Paths of the named temp files made while handling uploads: none, since uploads are decoded from memory
    (nothing to leave behind if the server dies mid-decode); UPLOAD_TMPDIR must stay empty too."""
    import tempfile
    made = []
    real = tempfile.mkstemp

    def spy(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        made.append(path)
        return fd, path

    monkeypatch.setattr(tempfile, "mkstemp", spy)
    yield made
    for path in made:
        assert os.path.dirname(path) == str(assets["uploads"])
        assert not os.path.exists(path), f"upload temp file {path} was left on disk"
    assert os.listdir(assets["uploads"]) == []


# ----------------------------------------------------------------------------------------------- helpers
def submit(page, button: str):
    """Click a submit button; return the HTTP response of the navigation it causes."""
    with page.expect_navigation(wait_until="load") as nav:
        page.click(button)
    return nav.value


def upload(page, server, path):
    page.goto(server["url"] + "/")
    page.set_input_files("#audio", str(path))
    return submit(page, "#upload-button")


def shown_probabilities(page, model: str) -> dict[str, float]:
    rows = page.locator(f"#model-{model} tr.prob")
    out = {}
    for i in range(rows.count()):
        row = rows.nth(i)
        text = row.locator("td.pct").inner_text()
        m = re.fullmatch(r"\s*(\d+\.\d)\s*%\s*", text.replace("\xa0", " "))
        assert m, f"probability cell {text!r} is not like '12.3 %'"
        out[row.get_attribute("data-family")] = float(m.group(1))
    return out


def html_probabilities(html: str, model: str) -> dict[str, float]:
    card = html.split(f'id="model-{model}"', 1)[1].split('class="card', 1)[0]
    return {fam: float(v) for fam, v in
            re.findall(r'data-family="(\w+)">.*?<td class="pct">(\d+\.\d)&nbsp;%</td>', card, re.S)}


def expected_probabilities(model, audio) -> np.ndarray:
    return model.predict(np.asarray(audio, np.float32)[None], verbose=0)[0].astype(np.float64)


def assert_page_matches(page, saved_models, audio, true_family=None):
    for name, model in saved_models.items():
        probs = expected_probabilities(model, audio)
        shown = shown_probabilities(page, name)
        assert list(shown) == list(FAMILIES), f"{name}: families shown {list(shown)}"
        for fam, p in zip(FAMILIES, probs):
            assert abs(shown[fam] - 100 * p) <= 0.05 + 1e-3, f"{name}/{fam}: page {shown[fam]} %, model {100 * p:.4f} %"
        top = FAMILIES[int(np.argmax(probs))]
        assert page.locator(f"#model-{name} .top-family").inner_text() == top
        assert page.locator(f"#model-{name} tr.prob.top").get_attribute("data-family") == top
        if true_family is not None:
            assert page.locator(f"#model-{name} tr.prob.true").get_attribute("data-family") == true_family
            verdict = page.locator(f"#model-{name} .verdict").inner_text()
            assert ("right" in verdict) == (top == true_family), verdict


def assert_figures_rendered(page):
    for sel in ("#waveform-plot", "#logmel-plot"):
        w = page.locator(sel).evaluate("img => img.complete ? img.naturalWidth : 0")
        assert w > 300, f"{sel} did not render (naturalWidth {w})"
    assert page.locator("#player").get_attribute("src").startswith("data:audio/wav;base64,")


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_upload_shows_the_models_probabilities(page, server, assets, saved_models, upload_log):
    from nsynth_cnn.audio import load_audio
    path = assets["files"] / "long stereo note.wav"
    response = upload(page, server, path)
    assert response.status == 200
    assert page.locator("#result-name").inner_text() == "long stereo note.wav"
    audio = load_audio(str(path), onset_trim=True)
    assert_page_matches(page, saved_models, audio)
    # the page used the onset-trimmed clip: for both models the untrimmed clip gives visibly other numbers
    untrimmed = load_audio(str(path))
    for name, model in saved_models.items():
        shown = shown_probabilities(page, name)
        assert max(abs(shown[f] - 100 * p) for f, p in zip(FAMILIES, expected_probabilities(model, untrimmed))) > 0.1
    # what is classified, stated on the page for this 6 s stereo 44.1 kHz file
    facts = page.locator("#facts").inner_text()
    assert "6.00" in facts and "44,100 Hz" in facts and "stereo" in facts and "Longer than 4" in facts, facts
    explain = page.locator("#what-is-classified")
    assert explain.get_attribute("open") is not None
    assert "starting at the onset" in explain.inner_text()
    assert_figures_rendered(page)
    assert page.locator(".weights-problem").count() == 0
    assert page.locator("#error").count() == 0
    page.screenshot(path=SCREENSHOT, full_page=True)
    assert upload_log == []   # decoded from memory: no upload file on disk


def test_other_formats_and_rates(server, assets, saved_models, upload_log, tmp_path):
    """flac / ogg / mp3 at other rates, mono: decoded and classified (Flask test client, no browser)."""
    from nsynth_cnn.audio import load_audio
    client = server["app"].test_client()
    formats = (("flac", "PCM_24", 48_000), ("ogg", "VORBIS", 22_050), ("mp3", "MPEG_LAYER_III", 32_000))
    for fmt, subtype, rate in formats:
        path = tmp_path / f"note.{fmt}"
        sf.write(str(path), harmonic(2.0, rate, f0=330.0), rate, format=fmt.upper(), subtype=subtype)
        with open(path, "rb") as fh:
            resp = client.post("/classify", data={"audio": (fh, path.name)}, content_type="multipart/form-data")
        html = resp.get_data(as_text=True)
        assert resp.status_code == 200, html[:2000]
        audio = load_audio(str(path), onset_trim=True)
        for name, model in saved_models.items():
            shown = html_probabilities(html, name)
            assert list(shown) == list(FAMILIES)
            for fam, p in zip(FAMILIES, expected_probabilities(model, audio)):
                assert abs(shown[fam] - 100 * p) <= 0.05 + 1e-3, f"{fmt} {name}/{fam}: {shown[fam]} vs {100 * p}"
    assert upload_log == []


@pytest.mark.slow
def test_sample_note_shows_true_family(page, server, assets, saved_models):
    from nsynth_cnn.audio import load_audio
    page.goto(server["url"] + "/")
    options = page.locator("#note option")
    offered = [options.nth(i).get_attribute("value") for i in range(options.count())]
    kept = [m["note_str"] for m, _ in assets["notes"] if m["instrument_family"] != 9]
    assert sorted(offered) == sorted(kept)          # synth_lead is not offered: the models have no such class
    note = next(m["note_str"] for m, _ in assets["notes"] if m["instrument_family_str"] == "organ")
    page.select_option("#note", note)
    response = submit(page, "#sample-button")
    assert response.status == 200
    assert page.locator("#result-name").inner_text() == note
    assert page.locator("#true-family").inner_text() == "organ"
    assert page.locator("#note").input_value() == note   # the picker keeps the choice
    audio = load_audio(str(assets["sample"] / "audio" / f"{note}.wav"), context="NSynth note")
    assert_page_matches(page, saved_models, audio, true_family="organ")
    assert_figures_rendered(page)


BAD_UPLOADS = [
    ("notes.txt", 400, "not a readable audio file"),
    ("empty.wav", 400, "empty (0 bytes)"),
    ("silence.wav", 400, "silent"),
    ("broken.wav", 400, "readable audio"),
]


@pytest.mark.slow
@pytest.mark.parametrize("filename,status,message", BAD_UPLOADS)
def test_bad_upload_gets_a_message(page, server, assets, upload_log, filename, status, message):
    response = upload(page, server, assets["files"] / filename)
    assert response.status == status
    error = page.locator("#error")
    assert error.is_visible()
    text = error.inner_text()
    assert message in text and filename in text, text
    assert page.locator("#result").count() == 0
    assert page.locator("#upload-form").is_visible()        # the user can try again from the same page
    assert "nsynth-upload-" not in page.content()           # no temp file's name leaks
    assert upload_log == []


@pytest.mark.slow
def test_too_big_upload_gets_a_message(page, server, assets, upload_log):
    app = server["app"]
    old = app.config["MAX_CONTENT_LENGTH"]
    app.config["MAX_CONTENT_LENGTH"] = 100 * 1024
    try:
        path = assets["files"] / "big.wav"
        assert path.stat().st_size > 2 * app.config["MAX_CONTENT_LENGTH"]
        response = upload(page, server, path)
        assert response.status == 413
        text = page.locator("#error").inner_text()
        assert "too big" in text and "100 KB" in text, text
        assert page.locator("#result").count() == 0
        assert "at most 100 KB" in page.locator("#upload-form").inner_text()   # the limit is stated up front
    finally:
        app.config["MAX_CONTENT_LENGTH"] = old
    assert upload_log == []   # rejected before anything was written


def test_no_file_chosen_and_unknown_note(server):
    client = server["app"].test_client()
    resp = client.post("/classify", data={}, content_type="multipart/form-data")
    assert resp.status_code == 400 and "No file was chosen" in resp.get_data(as_text=True)
    resp = client.get("/sample?note=../../etc/passwd")
    assert resp.status_code == 404 and "no note" in resp.get_data(as_text=True)
    resp = client.get("/nope")
    assert resp.status_code == 404 and 'id="upload-form"' in resp.get_data(as_text=True)


def test_missing_weights_and_sample_are_explained(tmp_path, assets):
    """No weights and no sample folder: the page says which file is missing and how to make it; uploads
    still show the waveform and log-mel image."""
    from nsynth_cnn.tools.serve import create_app
    empty = tmp_path / "no-weights"
    empty.mkdir()
    app = create_app(weights_dir=str(empty), sample_dir=str(tmp_path / "no-sample"))
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    for name in ("waveform", "logmel"):
        assert f"{empty}/{name}_cnn.keras does not exist" in html
        assert f"python -m nsynth_cnn train --model {name}" in html
    assert "sample notes are not available" in html and "no-sample" in html
    with open(assets["files"] / "long stereo note.wav", "rb") as fh:
        resp = client.post("/classify", data={"audio": (fh, "x.wav")}, content_type="multipart/form-data")
    html = resp.get_data(as_text=True)
    assert resp.status_code == 200
    assert 'id="logmel-plot"' in html and 'id="waveform-plot"' in html and "tr class=\"prob" not in html
    assert client.get("/sample?note=anything").status_code == 404


def test_weights_appearing_later_are_picked_up(tmp_path, assets):
    """The page runs while a model trains: a weights file written later is loaded without a restart."""
    from nsynth_cnn.tools.serve import create_app
    weights = tmp_path / "w"
    weights.mkdir()
    client = create_app(weights_dir=str(weights), sample_dir=str(assets["sample"])).test_client()
    assert "waveform_cnn.keras does not exist" in client.get("/").get_data(as_text=True)
    shutil.copy(assets["weights"] / "waveform_cnn.keras", weights / "waveform_cnn.keras")
    html = client.get("/").get_data(as_text=True)
    assert "waveform_cnn.keras does not exist" not in html and "logmel_cnn.keras does not exist" in html


def test_cli_flags():
    import argparse

    from nsynth_cnn.tools import serve
    ap = argparse.ArgumentParser()
    serve.add_parser(ap.add_subparsers(dest="command"))
    args = ap.parse_args(["serve"])
    assert (args.host, args.port, args.weights, args.sample) == ("127.0.0.1", 8000, "weights", "data/nsynth-sample")
    assert args.func is serve._main
    args = ap.parse_args(["serve", "--host", "0.0.0.0", "--port", "9001", "--weights", "w", "--sample", "s"])
    assert (args.host, args.port, args.weights, args.sample) == ("0.0.0.0", 9001, "w", "s")


def test_log_mel_image_comes_from_the_models_own_layer():
    """A model with non-default log-mel settings: the page's image has *its* shape and values."""
    from nsynth_cnn import features, models
    from nsynth_cnn.tools import serve
    from nsynth_cnn.params import LogMelParams
    model = models.build_model("logmel", p=LogMelParams(num_mel_bins=32, stft_hop_samples=1024), aug=None)
    audio = harmonic(4.0, SR, f0=262.0) * 0.3
    img, layer = serve.log_mel_image(audio, model)
    assert img.shape == (63, 32)
    direct = models.front_end(model, "log_mel")(features.PeakNormalize()(audio[None]))
    np.testing.assert_allclose(img, np.asarray(direct)[0, :, :, 0], atol=1e-6)
    assert img.max() == pytest.approx(1.0, abs=1e-5) and img.min() >= -1.0   # peak at 0 dB, floor at -80 dB
    assert "32 mel bins" in serve.describe_log_mel(layer) and "every 1024 samples" in serve.describe_log_mel(layer)
    default_img, _ = serve.log_mel_image(audio, None)
    assert default_img.shape == (126, 64)


@pytest.mark.slow
def test_serve_command_starts_on_loopback(tmp_path):
    """``python -m nsynth_cnn.tools serve`` in a fresh interpreter: listens on 127.0.0.1 and answers the page."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from conftest import ROOT, subprocess_env
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "nsynth_cnn.tools", "serve", "--port", str(port),
                             "--weights", str(tmp_path / "w"), "--sample", str(tmp_path / "s")],
                            cwd=ROOT, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline, html = time.monotonic() + 120, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
                    html = resp.read().decode()
                break
            except OSError:
                time.sleep(0.5)
        assert html is not None, f"server did not answer; exit code {proc.poll()}"
        assert 'id="upload-form"' in html and "waveform_cnn.keras does not exist" in html
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"Serving on http://127.0.0.1:{port}/" in out, out
    assert "logmel_cnn.keras does not exist" in out, out
