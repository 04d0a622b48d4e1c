"""``python -m aecli.sample``: the same as ``aecli sample`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sample", *sys.argv[1:]]))
