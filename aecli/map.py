"""``python -m aecli.map``: the same as ``aecli map`` (``aecli.use.map``)."""
from aecli.use.map import main

if __name__ == "__main__":
    raise SystemExit(main())
