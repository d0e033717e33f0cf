"""Checkers behind the graded exercises: one module per chapter.

Each exercise's checker is split into ``cases`` (plain inputs from a seed),
``probe`` (runs the learner's code in the kernel, records plain outputs) and
``judge`` (computes the references and scores the outputs, in a process that
never runs learner code); see `_core` and `_guard`. For a *spec* the chapter
module holds the cases (and any probe) and ``_judges/<chapter>.py`` the
reference, the likely bugs and any judge; `_rules` holds shared forbid rules.

The trusted grader uses three names from here:

    load_all()                               import every chapter's checker module
    registry()                               exercise id -> Exercise (.exercise, .name)
    judge_recorded(exercise, seed, folder)   -> Verdict (.passed, .line, .reasons)
"""
from ._core import Exercise, Verdict, judge_recorded, load_all, registry

__all__ = ["Exercise", "Verdict", "judge_recorded", "load_all", "registry"]
