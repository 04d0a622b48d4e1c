"""``python -m aecli.search``: the same as ``aecli search`` (``aecli.use.search``)."""
from aecli.use.search import main

if __name__ == "__main__":
    raise SystemExit(main())
