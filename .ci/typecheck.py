"""Type-check the installed package layout with mypy.

The layers live in top-level folders that pyproject's package-dir installs as ``megaset.*``
subpackages; mypy knows no such mapping. This lays the package out as it is installed (a tree of
links under ``build/typecheck``), runs mypy over it with pyproject's settings and names every file
by its place in the repository again, so that ``megaset/storage/store.py`` reads ``storage/store.py``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"


def package_dirs() -> dict[str, str]:
    """``{package: folder}`` as pyproject installs them, the deepest package first."""
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    return dict(sorted(setup["package-dir"].items(), key=lambda item: -item[0].count(".")))


def lay_out(dirs: dict[str, str]) -> None:
    """Links under ``build/typecheck/megaset`` to the files of each package folder."""
    shutil.rmtree(TREE, ignore_errors=True)
    top = TREE / "megaset"
    top.mkdir(parents=True)
    for entry in (ROOT / dirs["megaset"]).iterdir():
        if entry.name != "__pycache__":
            (top / entry.name).symlink_to(entry)
    for package, folder in dirs.items():
        if package != "megaset":
            (TREE / package.replace(".", "/")).symlink_to(ROOT / folder)


def main() -> int:
    """Run mypy (extra arguments passed on) and return its exit status."""
    dirs = package_dirs()
    lay_out(dirs)
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
           "--cache-dir", str(ROOT / ".mypy_cache"), *sys.argv[1:], "megaset"]
    done = subprocess.run(cmd, cwd=TREE, capture_output=True, text=True, check=False)
    # megaset/storage/x.py -> storage/x.py (packages mapped to a folder of another name first)
    pattern = re.compile("^(?:" + "|".join(re.escape(p.replace(".", "/") + "/") for p in dirs) + ")", re.MULTILINE)
    rename = {p.replace(".", "/") + "/": ("" if f == "." else f.rstrip("/") + "/") for p, f in dirs.items()}
    out = pattern.sub(lambda m: rename[m.group(0)], done.stdout)
    sys.stdout.write(out)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
