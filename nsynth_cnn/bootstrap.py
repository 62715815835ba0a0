"""Install only the runtime requirements that are missing; never touch an installed TensorFlow.

Run it by path, before the package's own dependencies exist (it uses only the standard library, and
``packaging`` when present)::

    python nsynth_cnn/bootstrap.py            # install what requirements.txt asks for and is missing
    python nsynth_cnn/bootstrap.py --check    # only list it (exit code 1 when something is missing)

The notebook's setup cell runs it with ``%run``. On Colab it keeps the preinstalled GPU build of TensorFlow (and
every other preinstalled package that satisfies requirements.txt): ``pip install -r requirements.txt`` would also
leave a satisfied ``tensorflow`` alone, but would upgrade anything pinned above Colab's version; this installs only
packages that are absent or outside their range, and TensorFlow only when no TensorFlow build at all is installed.
"""
from __future__ import annotations

import importlib.metadata as metadata
import os
import re
import subprocess
import sys

REQUIREMENTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "requirements.txt")
# Distributions that all provide the `tensorflow` module: any one of them satisfies `tensorflow`.
TENSORFLOW_BUILDS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-macos", "tensorflow-intel",
                     "tf-nightly", "tf-nightly-cpu")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")


def requirements(path: str = REQUIREMENTS) -> list[tuple[str, str]]:
    """``(name, specifier)`` of each line of a requirements file (comments and options skipped)."""
    found = []
    with open(path) as fh:
        for line in fh:
            line = line.split("#", 1)[0].strip()
            if not line or line.startswith("-"):
                continue
            m = _NAME.match(line.split(";", 1)[0])
            if m:
                found.append((m.group(1), m.group(3).strip()))
    return found


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def satisfies(version: str, specifier: str) -> bool:
    """Whether ``version`` is inside ``specifier`` (e.g. ">=3.10,<4"); True when ``packaging`` is absent."""
    if not specifier:
        return True
    try:
        from packaging.specifiers import SpecifierSet
    except ImportError:
        return True
    return SpecifierSet(specifier).contains(version, prereleases=True)


def missing(reqs=None, version_of=installed_version) -> tuple[list[str], list[str]]:
    """``(to_install, notes)``: the requirement strings to give pip, and lines to tell the user (e.g. an installed
    TensorFlow outside the tested range, kept as it is)."""
    to_install, notes = [], []
    for name, spec in (requirements() if reqs is None else reqs):
        if name.lower() == "tensorflow":
            builds = [(b, v) for b in TENSORFLOW_BUILDS if (v := version_of(b))]
            if builds:
                build, version = builds[0]
                if not satisfies(version, spec):
                    notes.append(f"keeping the installed {build} {version} (tested: tensorflow{spec}); "
                                 "if something fails, install a version in that range yourself")
                continue
        version = version_of(name)
        if version is None or not satisfies(version, spec):
            to_install.append(f"{name}{spec}")
    return to_install, notes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    to_install, notes = missing()
    for line in notes:
        print(f"note: {line}")
    if not to_install:
        print("all requirements are installed")
        return 0
    print("missing: " + " ".join(to_install))
    if "--check" in argv:
        return 1
    cmd = [sys.executable, "-m", "pip", "install", *to_install]
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)     # captured: a notebook shows it in the cell
    print((proc.stdout + proc.stderr)[-3000:])
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
