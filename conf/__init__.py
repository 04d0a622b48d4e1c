# Makes conf/ importable as the package ``aecli.conf`` (see pyproject.toml), so Hydra finds the
# configs with ``pkg://aecli.conf`` however aecli is installed. Importing it registers the typed
# schemas (aecli.config) that train.yaml and the group options build on: aecli.components imports
# the component modules, whose classes declare their schemas (aecli.declare).
import aecli.components  # noqa: F401
from aecli.config import register

register()
