"""What the examples share: the small-size switch CI uses."""

import argparse
import os


def small_from_args(description: str) -> bool:
    """``--small`` or ``JAXRNN_EXAMPLE_SMALL=1``: a few seconds' run (what CI does)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--small", action="store_true", help="a tiny run, for a smoke test")
    args = parser.parse_args()
    return args.small or os.environ.get("JAXRNN_EXAMPLE_SMALL", "") not in ("", "0")
