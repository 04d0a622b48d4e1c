# Makes conf/ importable as the package ``aecli.conf`` (see pyproject.toml), so Hydra finds the
# configs with ``pkg://aecli.conf`` however aecli is installed.
