"""Checkers behind the graded exercises: one module per chapter.

Each checker takes the learner's function, tests it on fresh random inputs and
edge cases against a reference, and prints one verdict line (see `_core`).
"""
