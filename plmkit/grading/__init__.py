"""Authoring (solutions -> exercise notebooks), execution, and the grader."""
