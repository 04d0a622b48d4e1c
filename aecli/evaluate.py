"""``python -m aecli.evaluate``: the same as ``aecli evaluate`` (``aecli.use.evaluate``)."""
from aecli.use.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
