"""Run a notebook top to bottom in place, the way the book's pages are made.

Widget state is stored in the notebook, so the book shows the widgets as they
were saved. Cells run in the notebook's own folder.
"""
from __future__ import annotations

import time
from pathlib import Path

from . import notebook as nbt


def execute(path: str | Path, timeout: int = 1800, kernel_name: str = "python3",
            timings: list | None = None) -> float:
    """Execute the notebook at `path` in place; return the seconds it took.

    Pass a list as `timings` to receive ``(seconds, code cell number, first line)`` for
    every code cell; the timing metadata itself is not stored in the notebook.
    """
    from nbclient import NotebookClient

    path = Path(path)
    nb = nbt.read(path)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel_name,
                            resources={"metadata": {"path": str(path.parent.resolve())}},
                            store_widget_state=True, record_timing=timings is not None)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    if timings is not None:
        code = [c for c in nb.cells if c.cell_type == "code"]
        for i, cell in enumerate(code):
            stamps = cell.metadata.pop("execution", {})
            t0, t1 = stamps.get("iopub.execute_input"), stamps.get("shell.execute_reply")
            if t0 and t1:
                from datetime import datetime
                dt = (datetime.fromisoformat(t1.replace("Z", "+00:00"))
                      - datetime.fromisoformat(t0.replace("Z", "+00:00"))).total_seconds()
                first = (cell.source.splitlines() or [""])[0][:60]
                timings.append((dt, i, first))
    nbt.write(nb, path)
    return seconds
