"""aecli's errors: each names a key (or file), what is wrong, and the fix, in one message.

- ``ConfigError``: bad input (a config value, a path, a file), found before any work starts.
- ``RunFailed``: a run that started cannot go on (a diverged loss, a full disk); what was
  written before (the last good checkpoint) is intact.

The CLI prints the message alone (no traceback) and exits with status 1; library callers of
``aecli.training.run.run`` get the exception.
"""
from __future__ import annotations

from hydra.errors import CompactHydraException


class AecliError(CompactHydraException):
    """Base class: ``aecli: error: KEY: problem`` and ``fix: how`` on the next line.

    A ``CompactHydraException``, so Hydra itself prints just the message where it reports one
    (a failed job of a sweep).
    """

    def __init__(self, key: str, problem: str, fix: str) -> None:
        self.key, self.problem, self.fix = key, problem, fix
        super().__init__(f"aecli: error: {key}: {problem}\n  fix: {fix}")

    def summary(self) -> str:
        """One line for a job's status file: the kind of error, the key and the problem."""
        return f"{type(self).__name__}: {self.key}: {self.problem}"

    def __reduce__(self) -> tuple:
        # pickle with the three arguments (the default passes only the message): a sweep job's
        # error travels back to the launching process (joblib, submitit) as a pickle
        return type(self), (self.key, self.problem, self.fix)


class ConfigError(AecliError):
    """Bad user input, refused before any training starts."""


class RunFailed(AecliError):
    """A started run that cannot continue; the last good checkpoint is kept."""


def printable(text: object) -> str:
    """``text`` (a path, a message naming one) safe to print whatever the file name's encoding:
    bytes that are not UTF-8 (kept by Python as surrogates) are shown as ``\\xNN``."""
    text = str(text)
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
