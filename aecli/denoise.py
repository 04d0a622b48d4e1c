"""``python -m aecli.denoise``: the same as ``aecli denoise`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["denoise", *sys.argv[1:]]))
