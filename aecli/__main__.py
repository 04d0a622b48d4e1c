"""``python -m aecli COMMAND ...``: the same as ``aecli COMMAND ...`` (``aecli.cli``)."""
from aecli.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
