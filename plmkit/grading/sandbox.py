"""One OS sandbox per submission: the grader's worker process and its kernel run inside it.

`command(...)` builds the command line that runs ``python -m plmkit.grading.worker`` for one
submission. With Linux namespaces (util-linux ``unshare``, no root needed) the worker gets:

* its own **PID namespace** (it is process 1: when it ends, every process it left behind,
  a daemon included, is killed; it cannot see or signal the grader or another submission);
* no **network** (a fresh network namespace with only the loopback device, which the
  kernel's ZeroMQ sockets need);
* its own **mount namespace**: every file system read-only, its private scratch folder
  mounted as ``/tmp`` (writable, and the only place it can write), a fresh ``/dev/shm``,
  the batch's folder (other submissions, their logs) out of sight, and the book's
  ``solutions/`` hidden behind an empty folder;
* **limits** from ``prlimit``: memory (``RLIMIT_DATA``: the private memory of each process),
  processes, open files, file size, CPU seconds; and the grader's wall-clock limit per
  notebook, after which the whole namespace is killed.

Where ``unshare`` cannot make namespaces (no user namespaces on the machine, macOS), the
worker still runs as its own process with the limits, and `probe()` says loudly what is
missing; the grader prints that warning and records it in every result.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

NAMESPACES = ["--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "--mount", "--net",
              "--kill-child"]


@dataclass(frozen=True)
class Limits:
    """What one submission may use. The defaults let an honest capstone on the real
    135M-parameter SmolLM2 pass (about 2-3 GB resident) and stop a runaway one."""

    memory_bytes: int = 8 * 2**30        # RLIMIT_DATA per process
    processes: int = 512                 # RLIMIT_NPROC (threads count; a kernel uses ~30)
    open_files: int = 1024
    file_bytes: int = 4 * 2**30          # the largest file one write may make
    cpu_seconds: int = 3600

    def prlimit(self) -> list[str]:
        return ["prlimit", f"--data={self.memory_bytes}", f"--nproc={self.processes}",
                f"--nofile={self.open_files}", f"--fsize={self.file_bytes}", f"--cpu={self.cpu_seconds}", "--"]


@functools.lru_cache(maxsize=1)
def probe() -> tuple[bool, str]:
    """(namespaces usable, words): tries the sandbox once on this machine."""
    if not shutil.which("unshare"):
        return False, "`unshare` (util-linux) is not installed"
    if not shutil.which("prlimit"):
        return False, "`prlimit` (util-linux) is not installed"
    script = "mount -t tmpfs tmpfs /tmp && mount -o remount,bind,ro / && ip link set lo up && echo ok"
    try:
        out = subprocess.run(["unshare", *NAMESPACES, "sh", "-c", script], capture_output=True, text=True,
                             timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"unshare failed: {e}"
    if out.returncode != 0 or "ok" not in out.stdout:
        why = (out.stderr.strip().splitlines() or ["no reason given"])[-1]
        return False, f"unshare cannot make user, PID, mount and network namespaces here ({why})"
    return True, "user, PID, mount and network namespaces (unshare), read-only file systems, limits (prlimit)"


def _kept_under_tmp(scratch: Path, book: Path) -> list[Path]:
    """Folders under /tmp that the worker needs (the book, the Python it runs, the corpora): the private
    /tmp would hide them, so they are bound into the scratch folder first and come along, read-only."""
    tmp, scratch = Path("/tmp").resolve(), scratch.resolve()
    wanted = [book, Path(sys.prefix), Path(sys.base_prefix), Path(sys.executable).resolve().parent,
              *(Path(p) for p in sys.path if p), Path(os.environ.get("PLMKIT_DATA") or "/nonexistent")]
    found: list[Path] = []
    for w in wanted:
        try:
            w = w.resolve()
        except OSError:
            continue
        if w.is_dir() and w.is_relative_to(tmp) and w != tmp and not w.is_relative_to(scratch) \
                and not scratch.is_relative_to(w):
            found.append(w)
    top = sorted({w for w in found if not any(w != o and w.is_relative_to(o) for o in found)})
    return top


def _mount_script(scratch: Path, hide: list[Path], book: Path) -> str:
    """The shell lines run as root of the new user namespace, before the worker starts."""
    q = shlex.quote
    lines = ["set -e", "ip link set lo up"]
    for keep in _kept_under_tmp(scratch, book):        # e.g. a checkout (and its .venv) in /tmp/ci
        inside = scratch.resolve() / keep.relative_to(Path("/tmp").resolve())
        lines += [f"mkdir -p {q(str(inside))}", f"mount --rbind {q(str(keep))} {q(str(inside))}"]
    lines += [
        f"mount --rbind {q(str(scratch))} /tmp",
        "mount -t tmpfs -o size=1g tmpfs /dev/shm",
        # read-only everywhere else (each mount separately: a bind remount changes one mount only)
        "for m in $(awk '{print $5}' /proc/self/mountinfo | sort -u); do",
        "  case \"$m\" in /tmp|/dev/shm|/proc|/proc/*|/sys|/sys/*|/dev|/dev/pts|/dev/mqueue) continue;; esac",
        "  mount -o remount,bind,ro \"$m\" 2>/dev/null || true",
        "done",
    ]
    for folder in hide:
        lines.append(f"if [ -d {q(str(folder))} ]; then mount -t tmpfs -o ro,size=4k tmpfs {q(str(folder))}; fi")
    solutions = book / "solutions"
    lines.append(f"if [ -d {q(str(solutions))} ]; then mount -t tmpfs -o ro,size=4k tmpfs {q(str(solutions))}; fi")
    return "\n".join(lines)


def command(scratch: Path, hide: list[Path], book: Path, limits: Limits, use_namespaces: bool) -> list[str]:
    """The command that runs one worker; `scratch` becomes its /tmp (or stays a folder without namespaces)."""
    worker = [sys.executable, "-m", "plmkit.grading.worker"]
    if not use_namespaces:
        return [*limits.prlimit(), *worker]
    script = _mount_script(scratch, hide, book) + "\nexec " + " ".join(shlex.quote(a) for a in
                                                                       [*limits.prlimit(), *worker])
    return ["unshare", *NAMESPACES, "sh", "-c", script]


def seed_home(home: Path) -> None:
    """Give a fresh home the caches that would cost seconds to rebuild (matplotlib's font list)."""
    mpl = Path(os.environ.get("MPLCONFIGDIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "matplotlib")
    (home / "mpl").mkdir(parents=True, exist_ok=True)
    for f in mpl.glob("fontlist-*.json") if mpl.is_dir() else []:
        shutil.copyfile(f, home / "mpl" / f.name)


def environment(scratch_inside: Path) -> dict[str, str]:
    """The worker's environment: the grader's, with home and caches inside the scratch folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PLMKIT_GRADE_"))}
    home = scratch_inside / "home"
    env.update(HOME=str(home), IPYTHONDIR=str(home / ".ipython"), MPLCONFIGDIR=str(home / "mpl"),
               XDG_CACHE_HOME=str(home / ".cache"), JUPYTER_RUNTIME_DIR=str(home / "jupyter"),
               TMPDIR=str(scratch_inside), PYTHONDONTWRITEBYTECODE="1")
    data = os.environ.get("PLMKIT_DATA") or str(Path.home() / ".cache" / "plmkit")
    env["PLMKIT_DATA"] = data                    # the corpora cache stays readable where it is
    return env
