"""``python -m aecli.bench``: the same as ``aecli bench`` (``aecli.training.bench``)."""
from aecli.training.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
