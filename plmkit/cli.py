"""The ``plmkit`` command: ``grade`` for learners and instructors, ``author`` and ``execute`` for authors."""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plmkit", description="Tools of the PLM book.")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("grade", help="grade exercise notebooks (exit 0: all pass, 1: some fail, 2: unusable input)",
                       description="Grade exercise notebooks, each in its own sandboxed process. Exit status: 0 "
                                   "every exercise of every notebook passes; 1 some exercise fails; 2 some "
                                   "notebook could not be graded (its row says why; the others are graded).")
    g.add_argument("paths", nargs="+", metavar="PATH", help="notebook(s) to grade; never modified")
    g.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    g.add_argument("--csv", metavar="FILE", help="write the gradebook: one row per student, points per exercise")
    g.add_argument("--feedback", metavar="DIR", help="write one Markdown feedback file per submission into DIR")
    g.add_argument("--chapter", metavar="NN_slug", help="the chapter being graded: a notebook of another "
                                                        "chapter is flagged (exit 2) instead of graded")
    g.add_argument("--roster", metavar="CSV", help="a CSV with columns file,student naming each submission's "
                                                   "student (default: the file name)")
    g.add_argument("--jobs", type=int, default=1, metavar="N", help="grade N submissions at a time (default 1)")
    g.add_argument("--partial", action="store_true",
                   help="partial credit: an exercise that fails earns points in proportion to its checks passed")
    g.add_argument("--notebook-timeout", type=int, default=None, metavar="SECONDS",
                   help="time limit for a whole notebook (default 1800)")
    g.add_argument("--memory", type=float, default=8.0, metavar="GB",
                   help="memory limit per process of a submission (default 8 GB)")
    g.add_argument("--no-sandbox", action="store_true",
                   help="grade in this process, without a sandbox (only for notebooks you trust)")
    g.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                   help="per-cell time limit (default 300); a cell still running then fails its exercise")
    g.add_argument("--reference", metavar="DIR",
                   help="folder with the pristine, executed notebooks (solutions/ or notebooks/ of the book); "
                        "default: the book's own solutions/")

    a = sub.add_parser("author", help="regenerate notebooks/ from solutions/")
    a.add_argument("--check", action="store_true", help="write nothing; exit 1 if notebooks/ is out of date")
    a.add_argument("--root", default=".", help="the book's root folder (default: .)")
    a.add_argument("--tag-demos", action="store_true",
                   help="first tag grade-skip every cell of solutions/ that grading does not need (metadata only)")
    a.add_argument("--force", action="store_true",
                   help="overwrite notebooks/ files whose exercise cells were edited (default: leave them, exit 1)")
    a.add_argument("chapters", nargs="*", help="only these chapters (e.g. 00_warmup)")

    s = sub.add_parser("start", help="copy the exercise notebooks to a folder of your own, to work in")
    s.add_argument("dest", metavar="DIR", nargs="?", default="my-work",
                   help="folder to copy them to (default: my-work, which git ignores)")
    s.add_argument("--root", default=None, help="the book's root folder (default: the checkout plmkit runs from)")
    s.add_argument("--force", action="store_true", help="overwrite notebooks that are already in DIR")
    s.add_argument("chapters", nargs="*", help="only these chapters (e.g. 00_warmup)")

    c = sub.add_parser("class-edition", help="write the book's sources without solutions (make book SOLUTIONS=hide)")
    c.add_argument("dest", metavar="DIR", help="folder to write (replaced if it exists); build it with jupyter-book")
    c.add_argument("--root", default=".", help="the book's root folder (default: .)")

    d = sub.add_parser("doctor", help="what this machine has and what each chapter needs (exit 1: something is missing)")
    d.add_argument("--root", default=None, help="the book's root folder (default: the checkout plmkit runs from)")

    e = sub.add_parser("execute", help="run notebooks top to bottom in place (stores outputs and widget state)")
    e.add_argument("paths", nargs="+", metavar="PATH")
    e.add_argument("--timeout", type=int, default=1800, metavar="SECONDS", help="per-cell time limit")
    e.add_argument("--timings", action="store_true", help="print the time of every cell that took 1 s or more")

    args = parser.parse_args(argv)
    if args.command == "grade":
        from .grading.grader import DEFAULT_NOTEBOOK_TIMEOUT, DEFAULT_TIMEOUT, grade
        from .grading.notebook import CHAPTER_RE
        from .grading.sandbox import Limits
        timeout = DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        if timeout <= 0:
            parser.error(f"--timeout must be a positive number of seconds, got {timeout}")
        whole = DEFAULT_NOTEBOOK_TIMEOUT if args.notebook_timeout is None else args.notebook_timeout
        if whole <= 0:
            parser.error(f"--notebook-timeout must be a positive number of seconds, got {whole}")
        if args.jobs < 1:
            parser.error(f"--jobs must be at least 1, got {args.jobs}")
        if not 0.5 <= args.memory <= 4096:
            parser.error(f"--memory must be between 0.5 and 4096 GB, got {args.memory}")
        if args.chapter is not None and not CHAPTER_RE.match(args.chapter):
            parser.error(f"--chapter must be a chapter name such as 06_llama, got {args.chapter!r}")
        try:
            return grade(args.paths, json_path=args.json, timeout=timeout, reference=args.reference,
                         jobs=args.jobs, csv_path=args.csv, feedback_dir=args.feedback, chapter=args.chapter,
                         roster=args.roster, partial=args.partial, sandboxed=not args.no_sandbox,
                         notebook_timeout=whole, limits=Limits(memory_bytes=int(args.memory * 2**30)))
        except (ValueError, OSError) as err:
            print(f"plmkit grade: {err}", file=sys.stderr)
            return 2
    if args.command == "author":
        from .grading.author import LearnerWorkError, author
        from .grading.notebook import NotebookError
        try:
            stale = author(args.root, check=args.check, chapters=args.chapters or None,
                           tag_demos=args.tag_demos, force=args.force)
        except LearnerWorkError as err:
            print(f"plmkit author: {err}", file=sys.stderr)
            return 1
        except (NotebookError, FileNotFoundError) as err:
            print(f"plmkit author: {err}", file=sys.stderr)
            return 2
        verb = "out of date" if args.check else "written"
        for name in stale:
            print(f"{verb}: {name}")
        if args.check and stale:
            print("run `plmkit author` to regenerate notebooks/", file=sys.stderr)
            return 1
        if not stale:
            print("notebooks/ is up to date")
        return 0
    if args.command == "doctor":
        from .doctor import doctor
        return doctor(args.root)
    if args.command == "start":
        from .grading.start import start
        try:
            copied, kept = start(args.dest, root=args.root, chapters=args.chapters or None, force=args.force)
        except (FileNotFoundError, ValueError) as err:
            print(f"plmkit start: {err}", file=sys.stderr)
            return 2
        for path in copied:
            print(f"copied: {path}")
        for path in kept:
            print(f"kept (already there, holds your work; --force overwrites): {path}")
        print(f"work in {args.dest}: jupyter lab {args.dest}   grade: plmkit grade {args.dest}/NN_chapter.ipynb")
        return 0
    if args.command == "class-edition":
        from .grading.author import write_class_edition
        from .grading.notebook import NotebookError
        try:
            chapters = write_class_edition(args.root, args.dest)
        except (NotebookError, FileNotFoundError, ValueError) as err:
            print(f"plmkit class-edition: {err}", file=sys.stderr)
            return 2
        print(f"{len(chapters)} chapters without solutions written to {args.dest}")
        return 0
    if args.command == "execute":
        from .grading.execute import execute
        for path in args.paths:
            print(f"executing {path} ...", flush=True)
            timings = [] if args.timings else None
            seconds = execute(path, timeout=args.timeout, timings=timings)
            print(f"  done in {seconds:.1f} s")
            for dt, i, first in sorted(timings or [], reverse=True):
                if dt >= 1.0:
                    print(f"  {dt:7.1f} s  cell {i:3d}  {first}")
        return 0
    return 2  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
