"""Sphinx configuration of npk's API reference: `make docs` (sphinx-build -W -c docs . build/docs).

The source directory is the repository root, so the README and the stored notebooks (rendered with
their outputs, never executed here) are pages as they are; only the files in `include_patterns` are read.
"""
project = "npk"
author = "the npk authors"
copyright = "the npk authors"
root_doc = "docs/index"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.mathjax", "myst_nb"]
include_patterns = ["docs/index.md", "docs/api.md", "README.md", "notebooks/0*.ipynb", "docs/cifar10/*.png"]
exclude_patterns = ["build", ".venv"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nb_execution_mode = "off"            # the notebooks are stored executed; tests/test_notebooks.py reruns them
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # the README starts at '#', its sections at '##'
html_theme = "alabaster"
html_title = "npk"


# ------------------------------------------------------------------ npk's plain-text docstrings
# npk writes docstrings for help() and for a reader of the source: formulas with * and |, names ending
# in _, and indented rule tables under a line of text. Before napoleon reads them, those become literal:
# * | and a trailing _ are escaped (not in doctests), and an indented block under a text line becomes a
# literal block.
import re

SECTION = re.compile(r"^\s*(Args|Arguments|Returns|Raises|Yields|Example|Examples|Attributes|Note|Notes):\s*$")
ESCAPE = re.compile(r"(?<!\\)([*|])|(?<=\w)_(?=\W|$)")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def plain_text(lines: list[str]) -> list[str]:
    """The docstring's lines as RST that shows them as written (see the comment above)."""
    out: list[str] = []
    section = block = None                     # indents of the open napoleon section / literal block
    for line in lines:
        text, indent = line.strip(), _indent(line)
        if text and block is not None and indent <= block:
            out.append("")                     # a literal block ends with a blank line
            block = None
        if text and section is not None and indent <= section:
            section = None
        if SECTION.match(line):
            section = indent
        elif text and block is None and section is None:
            above = next((i for i in range(len(out) - 1, -1, -1) if out[i].strip()), None)
            if above is not None and indent > _indent(out[above]) and not out[above].endswith("::"):
                out[above] = out[above][:-1] + "::" if out[above].endswith(":") else out[above] + " ::"
                if above == len(out) - 1:
                    out.append("")
                block = _indent(out[above])
        literal = block is not None or text.startswith((">>>", "..."))   # literal blocks, doctests
        out.append(line if literal else ESCAPE.sub(lambda m: "\\" + m.group(0), line))
    return out


def _process(app, what, name, obj, options, lines):
    lines[:] = plain_text(lines)


def _skip_foreign(app, what, name, obj, skip, options):
    """Members that scikit-learn or torch define (set_output, set_fit_request, ...) stay in their docs."""
    module = getattr(obj, "__module__", None)
    return True if module and not module.startswith("npk") else None


def setup(app):
    app.connect("autodoc-process-docstring", _process, priority=100)    # before napoleon (500)
    app.connect("autodoc-skip-member", _skip_foreign)
