"""MkDocs hook: render the Sphinx roles of jaxrnn's docstrings as plain code.

The docstrings are read both by ``help()`` and by mkdocstrings; they cross-reference with
Sphinx roles (``:func:`rnn```), which Markdown would print literally.
"""

import re

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|obj):(<code>)")


def on_page_content(html, page, config, files):
    return _ROLE.sub(r"\1", html)
