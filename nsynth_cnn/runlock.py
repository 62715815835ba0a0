"""Nothing lost when runs collide or users slip (issue 28): one run per output folder, checks before any work,
a full disk and Ctrl-C as clear stops.

:func:`claim` holds a folder for one run: a lock file ``.nsynth_cnn.lock`` inside it, locked by the operating
system (``flock`` on Linux/macOS, ``msvcrt.locking`` on Windows; the lock goes when its process dies, however it
dies) and holding the run's PID, start time and command, so that a second run is told who holds the folder. A
lock file left by a run that died is taken over with a note. The lock file is removed on release: nothing piles
up anywhere. While held, the temporary files (``*.tmp*``) a dead run left in the folder are removed (a best
checkpoint that a committed backup still names is kept: the resumed run renames it into place).

:func:`stopping` wraps the work done in a held folder: a full disk (``OSError`` ENOSPC, or TensorFlow's
``ResourceExhaustedError: ... No space left on device``) becomes one :class:`DataError` that says what to free
and that re-running resumes; Ctrl-C stops the run with that hint on stderr (``python -m nsynth_cnn`` then exits
with code 130). A Ctrl-C that Python would have swallowed (a ``KeyboardInterrupt`` raised inside a ``__del__``,
a generator's clean-up or a callback is printed as "Exception ignored" and dropped) is remembered by the SIGINT
handler installed here and raised at the next :func:`check_interrupt`; the conversion (``deferred=True``) only
stops at those checks, between notes, so a Ctrl-C never cuts one of its files in half.

:func:`training_run` is what :func:`nsynth_cnn.train.run_recipe` takes before any work: the folder held, the
data readable (:func:`check_readable`) and room for the checkpoints (:func:`check_disk_space`).
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import sys
import threading
import time

from . import schema
from .params import MODEL_NAMES
from .schema import DataError

LOCK_NAME = ".nsynth_cnn.lock"
WAIT_SECONDS = 0.5                     # a waiting claim tries again this often
WINDOWS_LOCK_OFFSET = 1 << 20          # msvcrt locks a byte range: one far past the lock file's text
CHECKPOINT_BYTES = 64 << 20            # per network: best checkpoint and two backups with optimizer state, temps
DISK_MARGIN = 64 << 20
# Our temporary files in a run's folder and its sub-folders start with one of these (files with ".tmp" in the
# name); in the folders that are ours alone (a backup, the conversion's work folder) every "*.tmp*" file goes.
TEMP_PREFIXES = tuple(p for m in MODEL_NAMES for p in (f"{m}_cnn", f".{m}_cnn")) + (
    "prepared.json", "stats.json", "nsynth-prepared-")
PRIVATE_FOLDERS = tuple(f".{m}_cnn.backup" for m in MODEL_NAMES) + (".prepare-tmp",)


# ----------------------------------------------------------------------------------------------- the lock
class _Held:
    def __init__(self, path: str, fd: int):
        self.path, self.fd, self.count, self.thread = path, fd, 1, threading.get_ident()


_held: dict[str, _Held] = {}
_held_guard = threading.Lock()


def lock_path(folder) -> str:
    return os.path.join(os.fspath(folder), LOCK_NAME)


def describe(info: dict | None) -> str:
    """Who holds a lock, for a message: PID, start time, host when not this one, command."""
    if not info or "pid" not in info:
        return "details unknown (its lock file is being written)"
    host = f" on {info['host']}" if info.get("host") and info.get("host") != socket.gethostname() else ""
    text = f"PID {info['pid']}{host}, started {info.get('started', '?')}"
    return text + (f": {info['command']}" if info.get("command") else "")


def read_info(folder) -> dict | None:
    """The lock file's record of the run that holds (or held) ``folder``; None if absent or unreadable."""
    try:
        with open(lock_path(folder), encoding="utf-8") as fh:
            info = json.loads(fh.read() or "null")
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


class _Busy(Exception):
    def __init__(self, info):
        super().__init__()
        self.info = info


def _our_info(what: str) -> dict:
    argv = getattr(sys, "orig_argv", None) or [sys.executable] + sys.argv
    command = " ".join([os.path.basename(argv[0])] + list(argv[1:]))
    return {"pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(),
            "what": what, "command": command[:300]}


def _os_lock(fd: int) -> bool | None:
    """Lock ``fd`` without waiting: True (ours now), False (another process holds it), None (no OS locks on this
    file system)."""
    try:
        if os.name == "nt":
            import msvcrt
            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:
        if os.name == "nt" or err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        if err.errno in (errno.ENOLCK, errno.EINVAL, errno.ENOSYS, getattr(errno, "ENOTSUP", -1),
                         getattr(errno, "EOPNOTSUPP", -1)):
            return None
        raise


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        import ctypes
        handle = ctypes.windll.kernel32.OpenProcess(0x1000, False, int(pid))   # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return False
        code = ctypes.c_ulong()
        ctypes.windll.kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        ctypes.windll.kernel32.CloseHandle(handle)
        return code.value == 259                                               # STILL_ACTIVE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


def _read_fd(fd: int) -> dict | None:
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 1 << 16).decode("utf-8") or "null")
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _acquire(path: str, what: str) -> tuple[int, dict | None]:
    """Open, lock and fill ``path``; returns ``(fd, record of a dead run that held it or None)``; :class:`_Busy`
    when a live run holds it. ``OSError`` when the file cannot be written."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_BINARY", 0), 0o644)
        try:
            got = _os_lock(fd)
            previous = _read_fd(fd)
            if got is False:
                raise _Busy(previous or read_info(os.path.dirname(path)))
            if got is None and previous and previous.get("pid") != os.getpid() \
                    and previous.get("host") in (None, socket.gethostname()) and _pid_alive(previous["pid"]):
                raise _Busy(previous)                  # no OS locks here: a live PID in the file holds it
            try:                                       # the file we locked may have been released (unlinked)
                same = os.path.samestat(os.fstat(fd), os.stat(path))   # between our open and our lock
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            text = json.dumps(_our_info(what)).encode("utf-8")
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, text)
            return fd, previous
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _release(path: str, fd: int) -> None:
    if os.name == "nt":
        with contextlib.suppress(OSError):
            import msvcrt
            os.lseek(fd, WINDOWS_LOCK_OFFSET, os.SEEK_SET)
            msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        os.close(fd)
        with contextlib.suppress(OSError):      # fails where another process has just opened it: then it is theirs
            os.remove(path)
        return
    with contextlib.suppress(OSError):          # unlink while still locked, so that no one locks a removed file
        if os.path.samestat(os.fstat(fd), os.stat(path)):
            os.remove(path)
    os.close(fd)


def _make_folder(folder: str, flag: str) -> bool:
    """Create ``folder`` if missing (True when this call created it); a one-line :class:`DataError` when it is a
    file or cannot be created."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"{flag} {folder!r} is a file, not a folder: give a folder name (it is created if missing), "
                        "or move that file away.")
    if os.path.isdir(folder):
        return False
    try:
        os.makedirs(folder)
    except (FileExistsError, NotADirectoryError):
        if os.path.isdir(folder):
            return False
        raise DataError(f"{flag} {folder!r} cannot be created: part of that path is a file, not a folder. "
                        "Give another folder.") from None
    except OSError as err:
        raise DataError(f"{flag} {folder!r} cannot be created ({err.strerror or err}): give a folder on a disk you "
                        "can write to.") from None
    return True


def _not_writable(folder: str, flag: str, err: OSError) -> DataError:
    reason = err.strerror or type(err).__name__
    return DataError(f"{flag} {folder!r} is not writable ({reason}): nothing was done. Give a folder you can write "
                     f"to (a read-only mount or someone else's folder cannot hold checkpoints), or fix its "
                     "permissions.")


@contextlib.contextmanager
def claim(folder, what: str = "run", *, flag: str = "--out", wait: bool = False, log=print, advice: str = ""):
    """Hold ``folder`` for this run (created if missing) until the block ends; see the module docstring.

    Held by another live run: a :class:`DataError` naming it (PID, start time, command) and ``advice``, or with
    ``wait`` a message and a wait until it is free. Re-entrant within a thread (``prepare`` under
    ``ensure_mixed``). A folder this call created and that is empty again at the end is removed."""
    folder = os.fspath(folder)
    key = os.path.realpath(folder)
    note = log or (lambda msg: None)
    with _held_guard:
        held = _held.get(key)
        if held is not None and held.thread == threading.get_ident():
            held.count += 1
    if held is not None and held.thread == threading.get_ident():
        try:
            yield folder
        finally:
            with _held_guard:
                held.count -= 1
        return
    if held is not None:
        raise DataError(f"{folder!r} is in use by another thread of this process ({describe(read_info(folder))}); "
                        "wait for it to finish.")
    created = _make_folder(folder, flag)
    path = lock_path(folder)
    told, missing = False, 0
    try:
        while True:
            try:
                fd, previous = _acquire(path, what)
                break
            except FileNotFoundError as err:      # the run we waited for removed the folder it had created
                missing += 1
                if missing > 20:
                    raise _not_writable(folder, flag, err) from None
                created = _make_folder(folder, flag) or created
            except _Busy as busy:
                if not wait:
                    raise DataError(f"{folder!r} is in use by another run ({describe(busy.info)}). "
                                    + (advice or "Wait for it to finish, or stop it (Ctrl-C in its terminal; a "
                                       "re-run resumes it).")) from None
                if not told:
                    note(f"{folder} is in use by another run ({describe(busy.info)}); waiting for it to finish "
                         "(Ctrl-C to stop waiting)")
                    told = True
                time.sleep(WAIT_SECONDS)
            except OSError as err:
                raise _not_writable(folder, flag, err) from None
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    with _held_guard:
        _held[key] = _Held(path, fd)
    try:
        if previous and previous.get("pid") != os.getpid():
            note(f"note: {folder} was held by a run that did not finish ({describe(previous)}; it was killed or "
                 "crashed): taken over, keeping what it completed")
        removed = clean_temporaries(folder)
        if removed:
            note(f"note: removed {len(removed)} temporary file(s) an interrupted run left in {folder}: "
                 + ", ".join(os.path.relpath(f, folder) for f in removed[:4]) + (" ..." if len(removed) > 4 else ""))
        yield folder
    finally:
        with _held_guard:
            _held.pop(key, None)
        with contextlib.suppress(OSError):
            clean_temporaries(folder)
        _release(path, fd)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(folder)                    # only if empty: a run that failed its checks leaves nothing


# ----------------------------------------------------------------------------------------------- temporaries
def _pending_best(backup: str) -> set[str]:
    """Best checkpoints (``.NAME_cnn.best.eNNNN.tmp.keras``) that a committed backup state names: kept."""
    keep = set()
    for entry in os.listdir(backup):
        if entry.endswith(".json") and ".tmp" not in entry:
            try:
                with open(os.path.join(backup, entry), encoding="utf-8") as fh:
                    pending = json.load(fh).get("best_pending")
            except (OSError, ValueError, AttributeError):
                continue
            if pending:
                keep.add(pending)
    return keep


def clean_temporaries(folder) -> list[str]:
    """Remove the temporary files of interrupted writes in ``folder`` (held by this run) and its sub-folders:
    ours by name (:data:`TEMP_PREFIXES` with ``.tmp``) there, every ``*.tmp*`` file in a backup or the
    conversion's work folder. Returns the removed paths."""
    folder = os.fspath(folder)
    removed = []
    places = [folder] + sorted(os.path.join(folder, d) for d in _listdir(folder)
                               if os.path.isdir(os.path.join(folder, d)) and d not in PRIVATE_FOLDERS)
    for place in places:
        entries = _listdir(place)
        keep = set()
        for d in entries:
            if d in PRIVATE_FOLDERS and os.path.isdir(os.path.join(place, d)):
                private = os.path.join(place, d)
                if d.endswith(".backup"):
                    keep |= _pending_best(private)
                removed += _remove_tmp(private, [e for e in _listdir(private) if ".tmp" in e])
        removed += _remove_tmp(place, [e for e in entries if e.startswith(TEMP_PREFIXES) and ".tmp" in e
                                       and e not in keep])
    return removed


def _listdir(folder: str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except OSError:
        return []


def _remove_tmp(folder: str, names: list[str]) -> list[str]:
    removed = []
    for name in names:
        path = os.path.join(folder, name)
        if os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
                removed.append(path)
    return removed


# ----------------------------------------------------------------------------------------------- pre-flight
def check_readable(path, flag: str = "--train") -> None:
    """:class:`DataError` unless ``path`` resolves to NSynth data whose first record reads and parses."""
    from . import data
    kind, files = data.resolve_source(path)      # its own messages: missing, empty, unknown layout
    tf = schema.tensorflow()
    try:
        if kind == "jsonwav":
            ds = data.nsynth_dataset(path).take(1)
        else:
            ds = data.record_dataset(files).take(1).batch(1).map(data.source_parser(files))
        next(iter(data.iterate(ds, path)), None)
    except (tf.errors.OpError, OSError) as err:
        detail = " ".join(str(getattr(err, "message", None) or err).split())[:200]
        raise DataError(f"{flag} {os.fspath(path)}: cannot be read ({type(err).__name__}: {detail}). Check that it "
                        "exists and that you may read it; nothing was done.") from None


def free_bytes(folder) -> int:
    probe = os.path.abspath(os.fspath(folder))
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    return shutil.disk_usage(probe).free


def check_disk_space(folder, networks: int = 1, flag: str = "--out") -> None:
    """:class:`DataError` unless the disk holding ``folder`` has room for the checkpoints of ``networks``
    networks (a rough :data:`CHECKPOINT_BYTES` each; a conversion checks its own space)."""
    need = networks * CHECKPOINT_BYTES + DISK_MARGIN
    free = free_bytes(folder)
    if free < need:
        raise DataError(f"{flag} {os.fspath(folder)!r}: its disk has {free / 1e6:.0f} MB free, and training "
                        f"{networks} network(s) writes about {need / 1e6:.0f} MB of checkpoints. Free "
                        f"{(need - free) / 1e6:.0f} MB there or give another {flag}; nothing was trained.")


# ----------------------------------------------------------------------------------------------- stopping
_interrupted = False
_deferred = False
_depth = 0


def _on_sigint(signum, frame):
    global _interrupted
    first = not _interrupted
    _interrupted = True
    if not (_deferred and first):       # a deferred region stops at its next check; a second Ctrl-C at once
        raise KeyboardInterrupt


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed in a :func:`stopping` block and has not stopped it yet
    (a deferred region, or a KeyboardInterrupt that Python swallowed)."""
    if _interrupted:
        raise KeyboardInterrupt


def disk_full(err: BaseException) -> bool:
    """True for a write that failed because the disk (or the quota) is full."""
    if isinstance(err, DataError):
        return False
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return True
    text = str(err)
    return "No space left on device" in text or "Disk quota exceeded" in text


@contextlib.contextmanager
def stopping(folder, doing: str, resume: str, *, deferred: bool = False, need_bytes: int | None = None):
    """Work that writes into ``folder``: a full disk becomes a :class:`DataError` (``doing``: what was being done;
    ``resume``: what a re-run does); Ctrl-C prints ``interrupted: ...`` and ``resume`` on stderr and propagates as
    ``KeyboardInterrupt``, also when it arrived where Python would have swallowed it. ``deferred``: Ctrl-C only
    sets a flag that :func:`check_interrupt` turns into the interrupt (a second Ctrl-C stops at once)."""
    global _interrupted, _deferred, _depth
    folder = os.fspath(folder)
    installed, previous = False, None
    if threading.current_thread() is threading.main_thread():
        with contextlib.suppress(ValueError, TypeError):
            previous = signal.getsignal(signal.SIGINT)
            if previous not in (signal.SIG_IGN, None):      # a run started with Ctrl-C ignored keeps it so
                signal.signal(signal.SIGINT, _on_sigint)
                installed = True
    was_deferred = _deferred
    _deferred = deferred or was_deferred
    _depth += 1
    try:
        yield
        check_interrupt()                   # a Ctrl-C that was swallowed while this block ran
    except KeyboardInterrupt as err:
        if not getattr(err, "nsynth_hint_shown", False):
            print(f"interrupted: {doing} stopped; run the same command again: {resume}", file=sys.stderr,
                  flush=True)
            with contextlib.suppress(AttributeError):
                err.nsynth_hint_shown = True
        raise
    except Exception as err:  # noqa: BLE001 - only a full disk is translated; anything else propagates
        if not disk_full(err):
            raise
        try:
            free = f"{free_bytes(folder) / 1e6:.0f} MB free now"
        except OSError:
            free = "no free space"
        need = f" (about {need_bytes / 1e9:.1f} GB in all)" if need_bytes else ""
        raise DataError(f"the disk holding {folder} is full ({free}) while {doing}. Free space on that disk{need}: "
                        f"delete files you no longer need (old runs' weights, prepared copies), or point the output "
                        f"at another disk. Then run the same command again: {resume}.") from None
    finally:
        _depth -= 1
        _deferred = was_deferred
        if installed:
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(signal.SIGINT, previous)
        if _depth == 0:
            _interrupted = False


# ----------------------------------------------------------------------------------------------- training
@contextlib.contextmanager
def training_run(out_dir, train_data, valid_data=None, *, networks: int = 1, log=print):
    """What :func:`nsynth_cnn.train.run_recipe` runs under: ``out_dir`` held by this run (every stage's folder is
    inside it) and checked writable, the data readable, room for the checkpoints; then the work, with a full disk
    and Ctrl-C as clear stops (:func:`stopping`). Nothing is trained when a check fails."""
    out_dir = os.fspath(out_dir)
    resume = "finished networks are kept and training resumes after the last completed epoch"
    with stopping(out_dir, f"training into {out_dir}", resume), \
            claim(out_dir, "train", log=log,
                  advice="Wait for it to finish, or stop it (Ctrl-C in its terminal; a re-run resumes it), or give "
                         "this run another --out."):
        check_readable(train_data, "--train")
        if valid_data is not None:
            check_readable(valid_data, "--valid")
        check_disk_space(out_dir, networks)
        yield
