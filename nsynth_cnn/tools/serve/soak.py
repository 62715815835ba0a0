"""Soak test of the web page: ``python -m nsynth_cnn.tools.serve.soak [--uploads 500] [--weights weights]``.

Starts ``python -m nsynth_cnn.tools serve`` in a subprocess on a free loopback port, sends it many short uploads
(wav/flac/ogg at several rates, mono and stereo, a few bad files and sample notes among them; part of them 4 at
a time from 4 threads) and prints the server's resident memory and open file descriptors (psutil) when it is
ready, after the first uploads and at each checkpoint.
``tests/test_serve_soak.py`` runs it and asserts that the last 200 uploads add < 20 MB and no open files.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import REPO_ROOT

CONCURRENCY = 4
CONCURRENT = ((100, 300), (400, 460))     # the uploads sent CONCURRENCY at a time (half-open ranges)


# ----------------------------------------------------------------------------------------------- the server
def proc_rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    import psutil
    return psutil.Process(pid).memory_info().rss / (1 << 20)


def proc_open_files(pid: int) -> dict[str, int]:
    """Open file descriptors of process ``pid`` (sockets and pipes included), and how many are regular files."""
    import psutil
    proc = psutil.Process(pid)
    return {"fds": proc.num_fds(), "files": len(proc.open_files())}


class Server:
    """``python -m nsynth_cnn.tools serve`` in a subprocess, on a free loopback port."""

    def __init__(self, weights: str, sample: str, *, env: dict | None = None, timeout: float = 180.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(env or os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env.setdefault("CUDA_VISIBLE_DEVICES", "")
        self.proc = subprocess.Popen([sys.executable, "-m", "nsynth_cnn.tools", "serve", "--port", str(self.port),
                                      "--weights", weights, "--sample", sample], cwd=str(REPO_ROOT), env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: deque[str] = deque(maxlen=200)   # the last lines of its output (access log, errors)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not any(line.startswith("Serving on") for line in self.lines):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not start:\n" + "".join(self.lines))
            time.sleep(0.2)

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._reader.join(10)


# ----------------------------------------------------------------------------------------------- the uploads
def _note(seconds: float, rate: int, f0: float, channels: int, lead: float = 0.1) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    x = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in range(1, 6) if f0 * h < rate / 2)
    x = 0.5 * np.exp(-3.0 * t) * x / np.max(np.abs(x))
    x = np.concatenate([np.zeros(int(lead * rate)), x]).astype(np.float32)
    return x if channels == 1 else np.stack([x, 0.7 * x], axis=1)


def upload_files() -> list[tuple[str, bytes]]:
    """Short recordings in several formats, rates and channel counts, and two bad files: ``(name, bytes)``."""
    import soundfile as sf
    out = []
    specs = [("wav", "PCM_16", 16_000, 1), ("wav", "PCM_16", 44_100, 2), ("flac", "PCM_24", 48_000, 1),
             ("ogg", "VORBIS", 22_050, 2), ("wav", "FLOAT", 8_000, 1), ("flac", "PCM_16", 32_000, 2)]
    for i, (fmt, subtype, rate, channels) in enumerate(specs):
        for k, f0 in enumerate((110.0, 262.0, 660.0)):
            buf = io.BytesIO()
            seconds = (0.5, 1.0, 1.5)[(i + k) % 3]
            sf.write(buf, _note(seconds, rate, f0 * (1 + 0.01 * i), channels), rate, format=fmt.upper(),
                     subtype=subtype)
            out.append((f"note{i}{k}.{fmt}", buf.getvalue()))
    out.append(("notes.txt", b"not a recording\n" * 50))
    buf = io.BytesIO()
    sf.write(buf, np.zeros(8000, np.float32), 16_000, format="WAV", subtype="PCM_16")
    out.append(("silence.wav", buf.getvalue()))
    return out


def post_upload(url: str, name: str, blob: bytes, timeout: float = 120.0) -> int:
    """POST one file to ``/classify`` as the page's form does; the HTTP status."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"{name}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + blob + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(url + "/classify", data=body, method="POST",
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    return _fetch(req, timeout)


def _fetch(req, timeout: float) -> int:
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            resp.read()
            return resp.status
    except urllib.error.HTTPError as err:
        err.read()
        err.close()
        return err.code


def sample_note(sample_dir: str) -> str | None:
    """A note the page offers from ``sample_dir`` (None without one)."""
    from . import sample_notes
    notes, _ = sample_notes(sample_dir)
    return notes[len(notes) // 2]["note"] if notes else None


# ----------------------------------------------------------------------------------------------- the soak
def soak(weights: str, sample: str, *, uploads: int = 500, checkpoints=(300,), warmup: int = 20,
         concurrent=None, log=print, env: dict | None = None) -> dict:
    """Send ``uploads`` uploads to a fresh server; return its memory and open files at each checkpoint.

    Uploads numbered in a ``concurrent`` half-open range go 4 at a time (4 threads); the others one at a time.
    After every 10th upload a sample note is asked for too (``/sample``), when the sample folder has notes. Two
    of the 20 upload files are bad (a text file, silence) and get the 400 page. Memory and descriptors are read
    while the server is idle; ``statuses`` counts the HTTP status of every request.
    """
    concurrent = CONCURRENT if concurrent is None else concurrent
    files = upload_files()
    note = sample_note(sample)
    marks = sorted({warmup, *checkpoints, uploads})
    server = Server(weights, sample, env=env)
    statuses: dict[int, int] = {}
    count_lock = threading.Lock()
    points = []

    def measure(done: int) -> dict:
        # the last request's thread may still be closing its socket: the fewest descriptors of a few reads
        reads = []
        for _ in range(5):
            time.sleep(0.1)
            reads.append(proc_open_files(server.pid))
        fds = min(reads, key=lambda f: f["fds"])
        point = {"uploads": done, "rss_mb": round(proc_rss_mb(server.pid), 1), **fds,
                 "seconds": round(time.monotonic() - t0, 1)}
        points.append(point)
        log(f"after {done:4d} uploads: RSS {point['rss_mb']:7.1f} MB, {point['fds']} fds "
            f"({point['files']} files), {point['seconds']:.0f} s")
        return point

    def one(i: int) -> int:
        name, blob = files[i % len(files)]
        try:
            got = [post_upload(server.url, name, blob)]
            if note is not None and i % 10 == 9:
                got.append(_fetch(urllib.request.Request(f"{server.url}/sample?note={note}"), 120.0))
        except OSError as err:
            raise RuntimeError(f"request {i} failed ({err}); server exit code {server.proc.poll()}, its output:\n"
                               + "".join(server.lines)) from None
        with count_lock:
            for status in got:
                statuses[status] = statuses.get(status, 0) + 1
        return got[0]

    try:
        t0 = time.monotonic()
        measure(0)
        done = 0
        with ThreadPoolExecutor(CONCURRENCY) as pool:
            for mark in marks:
                while done < mark:
                    if any(lo <= done < hi for lo, hi in concurrent):
                        n = min(CONCURRENCY, mark - done)
                        list(pool.map(one, range(done, done + n)))
                    else:
                        n = 1
                        one(done)
                    done += n
                measure(done)
        if server.proc.poll() is not None:
            raise RuntimeError("the server died:\n" + "".join(server.lines))
    finally:
        server.stop()
    by = {p["uploads"]: p for p in points}
    last = max(by)
    first = max((m for m in by if m <= last - 200), default=0)
    return {"points": points, "statuses": statuses, "last_window": (first, last),
            "rss_growth_last_mb": round(by[last]["rss_mb"] - by[first]["rss_mb"], 1),
            "fds_growth_last": by[last]["fds"] - by[first]["fds"],
            "files_growth_last": by[last]["files"] - by[first]["files"],
            "server_log_tail": "".join(list(server.lines)[-20:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nsynth_cnn.tools.serve.soak", description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=os.path.join(str(REPO_ROOT), "weights"))
    ap.add_argument("--sample", default=os.path.join(str(REPO_ROOT), "data", "nsynth-sample"))
    ap.add_argument("--uploads", type=int, default=500)
    ap.add_argument("--checkpoints", default="300", help="comma-separated upload counts to measure at")
    args = ap.parse_args(argv)
    res = soak(args.weights, args.sample, uploads=args.uploads,
               checkpoints=tuple(int(c) for c in args.checkpoints.split(",") if c))
    lo, hi = res["last_window"]
    print(f"{args.uploads} uploads to `python -m nsynth_cnn.tools serve --weights {args.weights} --sample "
          f"{args.sample}` ({CONCURRENCY} at a time in uploads {', '.join(f'{a}-{b}' for a, b in CONCURRENT)}), "
          f"{os.cpu_count()} CPUs")
    print(f"HTTP statuses: {dict(sorted(res['statuses'].items()))}")
    print(f"uploads {lo}->{hi}: RSS {res['rss_growth_last_mb']:+.1f} MB, open fds {res['fds_growth_last']:+d} "
          f"(regular files {res['files_growth_last']:+d})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
