"""``python -m aecli.score``: the same as ``aecli score`` (``aecli.use.score``)."""
from aecli.use.score import main

if __name__ == "__main__":
    raise SystemExit(main())
