"""A pytest plugin that `honour.run_nbval` loads next to nbval: it records, for every
notebook cell nbval runs, whether it passed and what it printed (the book's notebook
tests use it; `plmkit grade` does not)."""
from __future__ import annotations

import json
import os

import pytest

_results: dict[int, dict] = {}


def _text(outputs) -> str:
    parts = []
    for out in outputs or []:
        if out.get("output_type") == "stream":
            parts.append(out.get("text", ""))
        elif out.get("output_type") == "error":
            parts.append(f"{out.get('ename', 'Error')}: {out.get('evalue', '')}")
    return "".join(parts)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    num = getattr(item, "cell_num", None)
    if num is None or (rep.when != "call" and rep.passed):
        return
    xfail = hasattr(rep, "wasxfail")
    if rep.when == "call" or num not in _results:
        message = ""
        if rep.failed:
            message = str(getattr(rep.longrepr, "reprcrash", None) or rep.longrepr or "")[-2000:]
        _results[num] = {
            "passed": bool(rep.passed),          # an XPASS after a timeout counts as passed
            "xfailed": bool(xfail and rep.skipped),
            "output": _text(getattr(item, "test_outputs", None)),
            "message": message,
            "timed_out": bool(rep.failed and "Timeout of" in str(rep.longrepr)),
        }


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("PLMKIT_GRADE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump({str(k): v for k, v in _results.items()}, f)
