"""Fault injection for the kill tests (tests/test_resume.py, tests/test_contract.py): the places where a real
process may die, named so that a test can kill it exactly there. A no-op unless the environment variable
``NSYNTH_TEST_KILL_DURING`` is set.

``epoch:K`` during epoch K (after its first batch); ``backup:K`` / ``best:K`` while the backup / best checkpoint of
epoch K is written (its temporary file cut to half its size first); ``final`` while the final ``NAME_cnn.keras`` is
written; other names where a module calls :func:`kill_point` with them (e.g. ``prepare``'s passes).
"""
from __future__ import annotations

import os
import signal
import sys

KILL_ENV = "NSYNTH_TEST_KILL_DURING"


def kill_point(what: str, epoch: int | None = None, partial: str | None = None) -> None:
    """Test hook (see the module docstring): SIGKILL this process when ``NSYNTH_TEST_KILL_DURING`` names this
    moment, after cutting ``partial`` (a temporary file just written) to half its size."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    kind, _, at = spec.partition(":")
    if kind != what or (at and epoch is not None and int(at) != epoch):
        return
    if partial and os.path.isfile(partial):
        os.truncate(partial, os.path.getsize(partial) // 2)
    print(f"{KILL_ENV}={spec}: killing the process", flush=True)
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)
