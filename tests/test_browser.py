"""The built book as a reader sees it: every page opened in Chromium, driven through its DevTools
protocol (Playwright with the system Chromium), with the network cut off.

A page fails on: a console error or an uncaught exception, a request that would leave the machine
or a file that does not load, a MathJax error, TeX shown as text (`$...$`, `\\(`, a `\\command` in
the prose) or a literal `\\_`, a code or output line wider than the content column, an absolute
path in a stored output, displayed math wider than the column (cut off), and words about notes
the reader cannot see ("seed notes").

Reuses the book build of tests/test_book.py (tests/book_site.py). About 15 s for 16 pages.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from book_site import built_site
from conftest import CHAPTERS, ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("book")]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
BOOK_PAGES = ["book/intro", "book/setup", "book/grading", "book/glossary", "book/authoring", "book/references"]
PAGES = [f"solutions/{c}" for c in CHAPTERS] + BOOK_PAGES

# Problems known to be in pages this round's author of the page still has to fix; each entry must
# still fail (a fixed page fails the test until its entry is removed).
KNOWN = {
}

ABSOLUTE_PATH = re.compile(r"(?:^|[\s'\"(=:])(/(?:home|root|tmp|work|Users|usr|opt|var|mnt|private)/[^\s'\")]+"
                           r"|[A-Z]:\\[^\s'\"]+|\S*site-packages/\S*)", re.M)
NOTES = re.compile(r"\b(seed|source|study) notes\b", re.I)

# Runs in the page once it has loaded: waits for MathJax and the widgets, then reports what it sees.
INSPECT = r"""
async () => {
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  const mj = () => window.MathJax && window.MathJax.startup && window.MathJax.startup.document;
  if (document.querySelector('script[src*="mathjax"]')) {
    for (let i = 0; i < 100 && !(mj() && window.MathJax.startup.promise); i++) await sleep(50);
    if (mj()) await window.MathJax.startup.promise;
  }
  const views = document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]').length;
  for (let i = 0; i < 100 && document.querySelectorAll('.jupyter-widgets.widget-container, .jupyter-widgets.widget-inline-hbox, .jupyter-widgets.widget-html, .jupyter-widgets.widget-output, .jupyter-widgets.widget-tab, .jupyter-widgets.widget-box').length < views; i++) await sleep(50);
  await sleep(200);
  const art = document.querySelector('article') || document.body;
  const prose = art.cloneNode(true);
  prose.querySelectorAll('pre, code, mjx-container, script, style, .cell_output, .output').forEach(e => e.remove());
  const maths = mj() ? [...window.MathJax.startup.document.math].map(m => [m.math, window.MathJax.startup.toMML(m.root)]) : [];
  return {
    prose: prose.innerText,
    outputs: [...art.querySelectorAll('.cell_output')].map(e => e.innerText),
    maths: maths,
    typeset: art.querySelectorAll('mjx-container').length,
    wide: [...art.querySelectorAll('pre')].filter(p => p.scrollWidth > p.clientWidth + 1)
            .map(p => p.innerText.split('\n').reduce((a, b) => a.length >= b.length ? a : b).slice(0, 100)),
    wideMath: [...art.querySelectorAll('mjx-container[display="true"]')].filter(m => m.scrollWidth > m.clientWidth + 1)
            .map(m => { const it = mj() && window.MathJax.startup.document.getMathItemsWithin(m)[0];
                        return it ? it.math.trim().slice(0, 100) : m.textContent.slice(0, 100); }),
    widgets: views,
  };
}
"""


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        if shutil.which(name):
            return shutil.which(name)
    pytest.fail("no Chromium found: `make setup` installs Debian's chromium")


def problems_of(seen: dict, events: list[tuple[str, str]]) -> dict[str, list[str]]:
    """The problems on one page, by kind, from what INSPECT saw and what the browser logged."""
    found: dict[str, list[str]] = {}

    def add(kind, what):
        found.setdefault(kind, []).append(what)

    for kind, text in events:
        add(kind, text)
    prose = seen["prose"]
    for m in re.finditer(r".{0,40}(\$|\\\(|\\\[|\\[A-Za-z]{2,}).{0,40}", prose):
        add("TeX as text", m.group(0))
    if "\\_" in prose:
        add("literal \\_", prose[max(0, prose.index("\\_") - 40): prose.index("\\_") + 40])
    for tex, mml in seen["maths"]:
        if "<merror" in mml:
            add("MathJax error", tex[:120])
        for text in re.findall(r"<mtext[^>]*>([^<]*)</mtext>", mml):
            if "\\" in text:
                add("literal \\_" if "\\_" in text else "TeX as text", f"{text!r} in {tex[:80]!r}")
    if seen["maths"] and not seen["typeset"]:
        add("MathJax error", "the page has math, but MathJax typeset none of it")
    for line in seen["wide"]:
        add("wide line", line)
    for tex in seen.get("wideMath", []):
        add("wide math", tex)
    for out in seen["outputs"]:
        for m in ABSOLUTE_PATH.finditer(out):
            add("absolute path", m.group(1))
    for m in NOTES.finditer(prose + "\n".join(seen["outputs"])):
        add("notes", m.group(0))
    return found


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: `make setup` installs it (requirements.txt)")

    html, log = built_site()
    assert html is not None, log[-3000:]
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(),
                              args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                    "--disable-component-update", "--no-first-run"])
        yield html, b
        b.close()


def open_page(browser, page: str, width: int = 1280):
    """Open `page` of the built book; return (Playwright page, the events it logged so far)."""
    html, b = browser
    tab = b.new_page(viewport={"width": width, "height": 1200})
    events: list[tuple[str, str]] = []
    tab.on("console", lambda m: events.append(("console error", m.text)) if m.type == "error" else None)
    tab.on("pageerror", lambda e: events.append(("console error", f"uncaught: {e}")))
    tab.on("requestfailed", lambda r: events.append(("request failed", f"{r.url} ({r.failure})"))
           if not r.url.startswith(("http://", "https://")) else None)

    def route(r):                                  # the network is cut: nothing may leave the machine
        if r.request.url.startswith(("file:", "data:", "blob:", "about:")):
            return r.continue_()
        events.append(("network request", r.request.url))
        return r.abort()

    tab.route("**/*", route)
    tab.goto((html / f"{page}.html").as_uri(), wait_until="load")
    return tab, events


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_cleanly_in_chromium(browser, page):
    tab, events = open_page(browser, page)
    try:
        found = problems_of(tab.evaluate(INSPECT), events)
    finally:
        tab.close()
    known = KNOWN.get(page, {})
    unexpected = {k: v[:5] for k, v in found.items() if k not in known}
    assert not unexpected, f"{page}: " + "; ".join(f"{k}: {v}" for k, v in unexpected.items())
    fixed = [k for k in known if k not in found]
    assert not fixed, f"{page}: fixed, remove its KNOWN entry in tests/test_browser.py: {fixed}"


def test_the_checks_catch_what_they_are_for():
    """problems_of flags each kind of fault once, and passes a clean page."""
    clean = {"prose": "Plain prose, its math already typeset.", "outputs": ["loss 1.23", "see notebooks/00_warmup"],
             "maths": [("x_1", "<math><msub><mi>x</mi><mn>1</mn></msub></math>")], "typeset": 1, "wide": [],
             "widgets": 0}
    assert problems_of(clean, []) == {}
    bad = {"prose": "the identity $q(x)\\min(1, p)$ and max\\_distance; the seed notes say",
           "outputs": ["/work/main/plmkit/models/bert.py:328: UserWarning", "C:\\Users\\me\\x.py"],
           "maths": [("\\text{head\\_dim}", "<math><mtext>head\\_dim</mtext></math>"),
                     ("\\frac{", "<math><merror><mtext>Missing</mtext></merror></math>")],
           "typeset": 2, "wide": ["x" * 120], "wideMath": ["\\mathcal{L} = ..."], "widgets": 0}
    found = problems_of(bad, [("console error", "Uncaught SyntaxError")])
    assert set(found) == {"console error", "TeX as text", "literal \\_", "MathJax error", "wide line", "wide math",
                          "absolute path", "notes"}
    assert len(found["absolute path"]) == 2


# ---------------------------------------------------------------- static widgets switch without a kernel

# The pages whose widget text promises an interaction, and the control to use (plmkit.viz.precomputed_choice).
STATIC_WIDGETS = {"solutions/00_warmup": "slider", "solutions/07_sft": "select", "solutions/08_alignment": "select"}

SHOWN = r"""
(i) => {                 // what the i-th precomputed widget shows now: its control's value and its page
  const box = [...document.querySelectorAll('.widget-vbox')].filter(
      b => b.children.length === 2 && b.children[1].classList.contains('widget-box'))[i];
  const readout = box.querySelector('.widget-readout, select');
  return {value: readout ? (readout.value || readout.innerText) : null, page: box.children[1].innerHTML.replace(/ tabindex="-1"/g, '')};   // the theme marks a <pre> once shown
}
"""


@pytest.mark.parametrize("page", sorted(STATIC_WIDGETS))
def test_precomputed_widget_switches_in_the_static_page(browser, page):
    """Changing the control in Chromium, with no kernel, shows another precomputed state; going back
    shows the first one again."""
    tab, events = open_page(browser, page)
    try:
        tab.evaluate(INSPECT)
        first = tab.evaluate(SHOWN, 0)
        assert first["page"].strip(), f"{page}: the widget shows nothing"
        if STATIC_WIDGETS[page] == "slider":
            handle = tab.locator(".widget-vbox .noUi-handle").first
            handle.focus()
            handle.press("ArrowRight")
        else:
            tab.locator(".widget-vbox select").first.select_option(index=1)
        tab.wait_for_timeout(300)
        moved = tab.evaluate(SHOWN, 0)
        assert moved["value"] != first["value"], f"{page}: the control did not change"
        assert moved["page"] != first["page"], f"{page}: the control changed but the content stayed"
        if STATIC_WIDGETS[page] == "slider":
            tab.locator(".widget-vbox .noUi-handle").first.press("ArrowLeft")
        else:
            tab.locator(".widget-vbox select").first.select_option(index=0)
        tab.wait_for_timeout(300)
        assert tab.evaluate(SHOWN, 0)["page"] == first["page"]
        assert not events, events
    finally:
        tab.close()
