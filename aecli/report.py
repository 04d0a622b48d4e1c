"""``python -m aecli.report``: the same as ``aecli report`` (``aecli.use.report``)."""
from aecli.use.report import main

if __name__ == "__main__":
    raise SystemExit(main())
