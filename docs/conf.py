"""Sphinx configuration of the klime_mp user's guide (docs/).

Build: pip install -e ".[docs]", then sphinx-build -W -b html docs docs/_build/html.
The guides are Markdown (MyST); the API reference is generated from the installed
package's docstrings and type hints (autodoc).
"""

from __future__ import annotations

from klime_mp import __version__

project = "klime_mp"
author = "klime_mp contributors"
copyright = "klime_mp contributors"
release = version = __version__

extensions = ["myst_parser", "sphinx.ext.autodoc"]
source_suffix = {".md": "markdown"}
myst_heading_anchors = 3  # links such as delivery.md#sync-mode
myst_enable_extensions = ["colon_fence"]
exclude_patterns = ["_build", "README.md"]

autodoc_typehints = "description"  # types next to each parameter, not in a long signature
autodoc_member_order = "bysource"
autodoc_default_options = {"undoc-members": False}

html_theme = "furo"
html_title = f"klime_mp {release}"
