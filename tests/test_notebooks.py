"""Every chapter under nbval: solutions pass every cell; blank notebooks fail every check cell
and nothing else (demo cells use plmkit, so a blank notebook still runs end to end)."""
import pytest

from plmkit.grading import notebook as nbt

from conftest import CHAPTERS, ROOT, run_notebook_cells

pytestmark = pytest.mark.slow


def code_cells(path):
    nb = nbt.read(path)
    return [c for c in nb.cells if c.cell_type == "code"]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_passes_every_cell(chapter, tmp_path):
    path = ROOT / "solutions" / f"{chapter}.ipynb"
    results = run_notebook_cells(path, tmp_path)
    cells = code_cells(path)
    assert len(results) == len(cells)
    failed = {i: (cells[i].source[:60], r["message"][-400:]) for i, r in results.items() if not r["passed"]}
    assert not failed, failed


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_blank_notebook_fails_exactly_its_check_cells(chapter, tmp_path):
    path = ROOT / "notebooks" / f"{chapter}.ipynb"
    results = run_notebook_cells(path, tmp_path)
    cells = code_cells(path)
    checks = {i for i, c in enumerate(cells) if nbt.is_check(c)}
    assert checks, "a chapter without check cells"
    for i, r in results.items():
        if i in checks:
            assert not r["passed"], f"check cell {i} passes on a blank notebook: {cells[i].source}"
            assert "not attempted yet" in r["output"]
        else:
            assert r["passed"], f"cell {i} fails on a blank notebook: {cells[i].source[:80]}\n{r['message'][-500:]}"
