"""The one error type for bad input: a config key, what is wrong with it, and the fix."""
from __future__ import annotations

from hydra.errors import CompactHydraException


class ConfigError(CompactHydraException):
    """Bad user input, raised before any training starts.

    Subclassing Hydra's ``CompactHydraException`` makes Hydra print just this message (no
    traceback) and exit with status 1, in single runs and multiruns alike.
    """

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"aecli: error: {key}: {problem}\n  fix: {fix}")

    def __reduce__(self) -> tuple:
        # pickle with the three arguments (the default passes only the message): a sweep job's
        # error travels back to the launching process (joblib, submitit) as a pickle
        return type(self), (self.key, self.problem, self.fix)
