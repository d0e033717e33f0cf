"""Grade a class of N submissions of one chapter with ``plmkit grade --jobs J`` and print wall time and peak memory.

    python bench/grade_class.py --chapter 06_llama --students 30 --jobs 2

Half the class hands in the solutions, half the blank notebook. Peak memory is the largest
sum of resident memory (RSS) over the grader and all its descendants, sampled every 0.2 s
(worker, kernel, sandbox helpers). Prints one line per figure.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def tree_rss(pid: int) -> int:
    """Bytes resident in `pid` and every descendant of it."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            ppid, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo += children.get(p, [])
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chapter", default="06_llama")
    ap.add_argument("--students", type=int, default=30)
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    if args.students < 1 or args.jobs < 1:
        ap.error("--students and --jobs must be at least 1")
    folder = Path(tempfile.mkdtemp(prefix="plmkit-class-"))
    paths = []
    for i in range(args.students):
        src = ROOT / ("solutions" if i % 2 == 0 else "notebooks") / f"{args.chapter}.ipynb"
        dst = folder / f"student{i:02d}.ipynb"
        shutil.copyfile(src, dst)
        paths.append(str(dst))
    cmd = [sys.executable, "-m", "plmkit.cli", "grade", *paths, "--jobs", str(args.jobs), "--csv",
           str(folder / "grades.csv")]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    t.join()
    summary = out[out.find("summary:"):] if "summary:" in out else out[-2000:]
    print(summary.splitlines()[-1] if summary else "")
    print(f"students: {args.students}, chapter {args.chapter}, --jobs {args.jobs}, exit {proc.returncode}")
    print(f"wall: {wall:.1f} s ({wall / args.students:.1f} s per submission)")
    print(f"peak memory (RSS of the grader and all its processes): {peak[0] / 2**30:.2f} GiB")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
