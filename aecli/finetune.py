"""``python -m aecli.finetune``: the same as ``aecli finetune`` (``aecli.cli``)."""
import sys

from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["finetune", *sys.argv[1:]]))
