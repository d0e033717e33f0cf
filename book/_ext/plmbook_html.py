"""Sphinx fixes for the book's HTML pages (loaded through ``sphinx.local_extensions`` in _config.yml).

* Every inline script is emitted once. jupyter-book 1.x runs sphinx-thebe's and
  sphinx-togglebutton's ``env-before-read-docs`` hooks twice, so each page declared
  ``const THEBE_JS_URL`` twice and logged a SyntaxError in the browser console.
"""
from __future__ import annotations


def _key(js):
    attributes = getattr(js, "attributes", {}) or {}
    return str(getattr(js, "filename", js) or ""), tuple(sorted((k, str(v)) for k, v in attributes.items()))


def dedupe_scripts(app, pagename, templatename, context, doctree):
    """Drop repeated entries (same file or same inline body, same attributes) from the page's scripts."""
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, kept = set(), []
    for js in scripts:
        key = _key(js)
        if key in seen:
            continue
        seen.add(key)
        kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
