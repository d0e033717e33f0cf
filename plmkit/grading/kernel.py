"""Run code cells one at a time in a Jupyter kernel and say, in words, how each one ended.

The grader talks to the kernel only through this module. A cell ends in one of
four ways:

* ``ok``      it ran to the end;
* ``error``   it raised (``SystemExit`` included: IPython catches it and the kernel lives on);
* ``timeout`` it was still running after the time limit (an endless loop): the kernel is killed;
* ``died``    the kernel process ended (``os._exit``, a crash in native code, the out-of-memory killer).

After ``timeout`` or ``died`` the kernel is gone; the caller starts a new one.
The kernel runs the Python that runs the grader (like nbval's ``--nbval-current-env``),
in a folder the caller chooses, with the environment the caller gives it.
"""
from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import nbformat

OK, ERROR, TIMEOUT, DIED = "ok", "error", "timeout", "died"


@dataclass
class Outcome:
    status: str          # OK, ERROR, TIMEOUT or DIED
    message: str = ""    # one line: "NameError: name 'x' is not defined", "killed by signal 9 ..."
    ename: str = ""      # the exception's class name for ERROR ("SystemExit", "NameError", ...)
    output: str = ""     # what the cell printed (for diagnostics only: never a verdict)

    @property
    def ok(self) -> bool:
        return self.status == OK


def _current_python_specs():
    """A kernel-spec manager whose 'python3' is always the Python running this code."""
    import ipykernel.kernelspec
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

    class CurrentPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):  # noqa: ARG002 - one kernel only
            return KernelSpec(resource_dir=ipykernel.kernelspec.RESOURCES,
                              **ipykernel.kernelspec.get_kernel_dict())

    return CurrentPython()


def _one_line(text: str, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    line = lines[0] if lines else ""
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _printed(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
    return "".join(parts)[-4000:]


def death_reason(returncode: int | None) -> str:
    """Words for a kernel process's exit status.

    >>> death_reason(-9)
    'the kernel was killed by signal 9 (SIGKILL: out of memory?)'
    >>> death_reason(3)
    'the kernel exited with status 3 (os._exit or a crash in native code)'
    """
    if returncode is None:
        return "the kernel died"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = "an unknown signal"
        hint = {"SIGKILL": ": out of memory?", "SIGSEGV": ": a crash in native code",
                "SIGABRT": ": an aborted native call"}.get(name, "")
        return f"the kernel was killed by signal {-returncode} ({name}{hint})"
    return f"the kernel exited with status {returncode} (os._exit or a crash in native code)"


class Kernel:
    """One Jupyter kernel: ``start()``, then ``run(source)`` cell after cell, then ``stop()``."""

    def __init__(self, folder: str | Path, env: dict[str, str], timeout: int, startup_timeout: int = 120):
        if timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")
        self.folder, self.env, self.timeout = str(folder), dict(env), timeout
        self.startup_timeout = startup_timeout
        self.client = None

    def start(self) -> None:
        from jupyter_client.manager import AsyncKernelManager
        from nbclient import NotebookClient

        km = AsyncKernelManager(kernel_name="python3", kernel_spec_manager=_current_python_specs())
        self.client = NotebookClient(
            nbformat.v4.new_notebook(), km=km, timeout=self.timeout, startup_timeout=self.startup_timeout,
            shutdown_kernel="immediate", interrupt_on_timeout=False, record_timing=False,
            allow_errors=False, kernel_name="python3")
        # what the kernel process itself writes (not a cell's output) goes nowhere: it must never
        # mix into the grader's own stdout
        self.client.start_new_kernel(cwd=self.folder, env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.client.start_new_kernel_client()

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.km is not None

    def _returncode(self) -> int | None:
        km = self.client.km if self.client is not None else None
        process = getattr(getattr(km, "provisioner", None), "process", None)
        if process is None:
            return None
        try:
            return process.wait(timeout=5)
        except Exception:  # noqa: BLE001 - still running or already reaped
            return process.poll()

    def run(self, source: str) -> Outcome:
        """Run one cell's source; after TIMEOUT or DIED the kernel is stopped."""
        from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

        if not self.alive:
            raise RuntimeError("the kernel is not running: call start() first")
        cell = nbformat.v4.new_code_cell(source)
        self.client.nb = nbformat.v4.new_notebook(cells=[cell])
        try:
            self.client.execute_cell(cell, 0)
        except CellTimeoutError:
            self.stop()
            return Outcome(TIMEOUT, f"timed out after {self.timeout} s (an endless loop?)", output=_printed(cell))
        except DeadKernelError:
            code = self._returncode()
            self.stop()
            return Outcome(DIED, death_reason(code), output=_printed(cell))
        except CellExecutionError as e:
            ename = getattr(e, "ename", "") or "Error"
            evalue = _one_line(getattr(e, "evalue", "") or "")
            message = f"{ename}: {evalue}" if evalue else ename
            if ename == "MemoryError" or "not enough memory" in evalue or "can't allocate memory" in evalue:
                message += " (out of memory)"
            return Outcome(ERROR, message, ename=ename, output=_printed(cell))
        return Outcome(OK, output=_printed(cell))

    def stop(self) -> None:
        if self.client is None:
            return
        try:
            if self.client.km is not None:
                self.client._cleanup_kernel()
        except Exception:  # noqa: BLE001 - a dead kernel may refuse a clean shutdown
            pass
        self.client = None

    def __enter__(self) -> "Kernel":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
