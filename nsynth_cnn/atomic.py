"""Files written whole or not at all: a temporary name, flushed to disk, then renamed into place (``os.replace``
is atomic on POSIX and Windows). A kill at any instant leaves the old file or the new one, never a part."""
from __future__ import annotations

import json
import os


def fsync_file(path: str) -> None:
    """Flush a written file to disk (a kill needs no fsync; a power cut does)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomic(tmp: str, path: str) -> None:
    """Move the fully written ``tmp`` onto ``path`` in one step."""
    fsync_file(tmp)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        fh.write(text)
    replace_atomic(tmp, path)


def write_json_atomic(path: str, obj, **dump_options) -> None:
    """``obj`` as JSON (indented by one space unless ``dump_options`` say otherwise)."""
    write_text_atomic(path, json.dumps(obj, **{"indent": 1, **dump_options}))
