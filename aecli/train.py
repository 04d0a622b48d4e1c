"""``python -m aecli.train``: the same as ``aecli train`` (``aecli.training.app``)."""
from aecli.training.app import main

if __name__ == "__main__":
    main()  # exits 1 or 128 + N itself; returning is success (0)
