"""``python -m aecli.sample``: the same as ``aecli sample`` (``aecli.use.sample``)."""
from aecli.use.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
