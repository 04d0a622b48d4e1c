"""``python -m aecli.finetune``: the same as ``aecli finetune`` (``aecli.use.finetune``)."""
from aecli.use.finetune import main

if __name__ == "__main__":
    raise SystemExit(main())
