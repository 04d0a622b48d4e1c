"""``python -m aecli.denoise``: the same as ``aecli denoise`` (``aecli.use.denoise``)."""
from aecli.use.denoise import main

if __name__ == "__main__":
    raise SystemExit(main())
