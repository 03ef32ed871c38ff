"""``python -m jaxrnn``: the command line (see :mod:`jaxrnn.cli`)."""

from jaxrnn.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
