"""``python -m aecli.evaluate``: the same as ``aecli evaluate`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["evaluate", *sys.argv[1:]]))
