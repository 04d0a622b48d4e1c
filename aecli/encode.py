"""``python -m aecli.encode``: the same as ``aecli encode`` (``aecli.use.encode``)."""
from aecli.use.encode import main

if __name__ == "__main__":
    raise SystemExit(main())
