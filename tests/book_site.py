"""One build of the book per test process, shared by tests/test_book.py and tests/test_browser.py.

Both modules are in the xdist group "book", so under `make test` (-n 2 --dist loadgroup) they run
in the same worker and the book is built once (~10 s).
"""
from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import ROOT


@functools.cache
def built_site() -> tuple[Path | None, str]:
    """(folder of the built HTML, or None when the build failed, the build's log)."""
    out = Path(tempfile.mkdtemp(prefix="plm-book-"))
    atexit.register(shutil.rmtree, out, True)
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "--path-output", str(out), str(ROOT)],
                          capture_output=True, text=True, cwd=ROOT)
    log = proc.stdout + proc.stderr
    return (out / "_build" / "html" if proc.returncode == 0 else None), log
