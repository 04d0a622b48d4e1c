"""``python -m aecli.bench``: the same as ``aecli bench`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
