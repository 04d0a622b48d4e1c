"""``python -m aecli.encode``: the same as ``aecli encode`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["encode", *sys.argv[1:]]))
