"""Run a notebook top to bottom in place, the way the book's pages are made.

Widget state is stored in the notebook, so the book shows the widgets as they
were saved. Cells run in the notebook's own folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import notebook as nbt


def execute(path: str | Path, timeout: int = 1800, kernel_name: str = "python3") -> float:
    """Execute the notebook at `path` in place; return the seconds it took."""
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbt.read(path)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent.resolve())}},
                            store_widget_state=True, record_timing=False)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    nbt.write(nb, path)
    return seconds
