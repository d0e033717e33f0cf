"""One grader process per submission: ``python -m plmkit.grading.worker`` (started by `grader.grade`).

It reads its task as one JSON line on stdin (never argv or the environment, which the
kernel could read): the submission, the folder of the pristine notebook, the time limit,
and a random token. It grades the notebook with `grader.grade_one` and prints the result as
one line ``PLMKIT-RESULT <token> <json>`` on stdout; the grader believes only the line with
its own token. The kernel's stdout and stderr go nowhere, so what a cell prints never
reaches this stream.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict

MARK = "PLMKIT-RESULT"


def main() -> int:
    task = json.loads(sys.stdin.readline())
    sys.stdin.close()
    token = task.pop("token")
    from . import grader

    result = grader.grade_one(task["path"], task["reference"], task["timeout"], partial=task.get("partial", False))
    line = json.dumps(asdict(result), ensure_ascii=False)
    sys.stdout.write(f"\n{MARK} {token} {line}\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
