"""``python -m aecli.score``: the same as ``aecli score`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["score", *sys.argv[1:]]))
