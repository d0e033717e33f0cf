"""The trusted half of the checkers: references, likely bugs and custom judges, one module per chapter.

`plmkit/checks/<chapter>.py` is what a notebook kernel imports: the exercises, their cases,
their forbidden calls and any probe of their own. Nothing there can compute a right answer.
This package holds what decides the verdict, ``TRUSTED = {exercise name: Trusted(...)}``, and
is imported only when an answer is judged: by the grader's own process (``judge_recorded``),
or, on the honour path (Jupyter, plain nbval), in the kernel. Its name starts with ``_`` so
that ``load_all()`` and the chapter modules never import it; `tests/test_specs.py` checks that
importing a chapter's kernel half leaves it unloaded.
"""
