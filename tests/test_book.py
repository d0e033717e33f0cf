"""The book builds with zero warnings and its pages work offline in a real browser."""
from __future__ import annotations

import json
import re
import shutil
from html import unescape
import subprocess
import sys
from pathlib import Path

import pytest

from book_site import built_site
from conftest import CHAPTERS, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]


@pytest.fixture(scope="module")
def site() -> Path:
    if not (ROOT / "_vendor" / ".done").exists():
        pytest.fail("_vendor/ is missing: run `make setup` (it fetches MathJax and the widget scripts)")
    html, log = built_site()                      # shared with tests/test_browser.py: one build
    assert html is not None, log[-5000:]
    warnings = [line for line in log.splitlines() if "WARNING" in line or "ERROR" in line]
    assert not warnings, "\n".join(warnings)
    return html


def test_every_chapter_and_page_is_built(site):
    for chapter in CHAPTERS:
        assert (site / "solutions" / f"{chapter}.html").is_file()
    for page in ("intro", "setup", "grading", "glossary", "references", "authoring"):
        assert (site / "book" / f"{page}.html").is_file()
    refs = (site / "book" / "references.html").read_text()
    assert "attention is all you need" in refs.lower()


def test_chapter_page_hides_solutions_and_links_the_exercise_notebook(site):
    html = (site / "solutions" / "00_warmup.html").read_text()
    assert "Show solution" in html
    assert "BEGIN SOLUTION" not in html.split("Show solution", 1)[0], "a solution is shown before its toggle"
    assert "00_warmup.ipynb" in html and "_downloads" in html
    assert re.search(r"Exercise 0\.1 softmax: (\d+)/\1 checks passed", html)  # the stored verdicts are shown


def test_site_has_no_network_dependencies(site):
    html = (site / "solutions" / "00_warmup.html").read_text()
    for cdn in ("cdn.jsdelivr.net", "unpkg.com", "cdnjs.cloudflare.com"):
        assert f'src="https://{cdn}' not in html, f"page loads a script from {cdn}"
    assert (site / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()
    assert (site / "_static" / "widgets" / "embed-amd.js").is_file()


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium found: `make setup` installs Debian's chromium")


def test_math_and_widgets_render_offline_in_headless_chromium(site, tmp_path):
    page = site / "solutions" / "00_warmup.html"
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=15000",
           "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=<-loopback>",  # no network, as offline
           "--dump-dom", page.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    dom = proc.stdout
    assert "<html" in dom, proc.stderr[-2000:]
    assert "<mjx-container" in dom, "MathJax did not typeset the page's math"
    assert "widget-slider" in dom or "jupyter-widgets" in dom and "widget-" in dom, \
        "the embedded ipywidget was not rendered"


def test_class_edition_builds_without_any_solution(tmp_path):
    """`make book SOLUTIONS=hide`: the same book, every answer replaced by its stub."""
    from plmkit.grading import author as authoring
    from plmkit.grading import notebook as nbt

    if not (ROOT / "_vendor" / ".done").exists():
        pytest.fail("_vendor/ is missing: run `make setup` (it fetches MathJax and the widget scripts)")
    src = tmp_path / "class-src"
    subprocess.run([str(Path(sys.executable).parent / "plmkit"), "class-edition", str(src), "--root", str(ROOT)],
                   check=True, capture_output=True, text=True)
    jb = Path(sys.executable).parent / "jupyter-book"
    proc = subprocess.run([str(jb), "build", "-W", "-n", "--keep-going", "--path-output", str(tmp_path / "out"),
                           str(src)], capture_output=True, text=True, cwd=src)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    site = tmp_path / "out" / "_build" / "html"
    intro = unescape(re.sub(r"<[^>]+>", "", (site / "book" / "intro.html").read_text()))
    assert "Show solution" not in intro and "prints no solutions" in intro
    for chapter in CHAPTERS:
        html = (site / "solutions" / f"{chapter}.html").read_text()
        assert "Show solution" not in html
        html = unescape(re.sub(r"<[^>]+>", "", html))      # the text a reader sees, highlighting removed
        assert "replace this line with your code" in html
        assert "checks passed" not in html and "✅" not in html, f"{chapter}: a green verdict under a stub"
        assert "Answers" not in re.findall(r"<summary>(.*?)</summary>", html), f"{chapter}: answers are published"
        sol = nbt.read(ROOT / "solutions" / f"{chapter}.ipynb")
        # what the class edition itself shows (prose, stubs, demo code), as a reader sees it:
        # markdown backticks dropped and whitespace collapsed ("return `cache`" reads "return cache")
        shown = "\n".join(c.source for c in authoring.class_edition(sol, chapter).cells).replace("`", "")
        elsewhere = json.dumps(" ".join(shown.split()))
        for cell in sol.cells:
            if nbt.is_exercise(cell):
                body = cell.source.split(authoring.BEGIN, 1)[1].split(authoring.END, 1)[0]
                lines = {ln.split("#")[0].strip() for ln in body.splitlines()}
                lines = [ln for ln in lines if len(ln) >= 12 and json.dumps(" ".join(ln.split()))[1:-1] not in elsewhere]
                assert lines, f"{chapter}: no line of a solution is distinctive enough to look for"
                for line in lines:
                    assert line not in html, f"{chapter}: the solution line {line!r} is published"
