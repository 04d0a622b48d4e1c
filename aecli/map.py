"""``python -m aecli.map``: the same as ``aecli map`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["map", *sys.argv[1:]]))
