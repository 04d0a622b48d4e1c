# Makes conf/ importable as the package ``aecli.conf`` (see pyproject.toml), so Hydra finds the
# configs with ``pkg://aecli.conf`` however aecli is installed. Importing it registers the typed
# schemas (aecli.config) that train.yaml and the group options build on.
from aecli.config import register

register()
