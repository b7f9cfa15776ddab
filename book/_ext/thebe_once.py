"""Sphinx extension: emit each inline <script> once per page.

sphinx-thebe 0.3.1 registers its inline configuration script every time Sphinx reads
documents, and a Jupyter Book 1.x build registers it twice (once with ``filename=None``,
once with ``filename=''``), so pages declared ``const THEBE_JS_URL`` twice and the
browser raised "Identifier 'THEBE_JS_URL' has already been declared". Dropping exact
duplicates fixes the page at its source.
"""

from __future__ import annotations


def _dedupe_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, unique = set(), []
    for script in context.get("script_files", []):
        attributes = getattr(script, "attributes", {})
        key = (getattr(script, "filename", str(script)) or "", tuple(sorted(attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
