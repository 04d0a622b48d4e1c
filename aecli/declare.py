"""A config key's range, declared once on its dataclass field (no torch import here).

``bounded(16, ge=1)`` is a field whose default is 16 and whose range is ``>= 1``; ``sizes([256],
ge=1)`` a list of whole numbers, each in range. ``aecli.config`` declares every schema with
them; from that one declaration come the range checks (``aecli.config.check``), the use
commands' flag checks (``aecli.config.bounds``), the key table of docs/configuration.md
(``aecli.config.key_table``) and the models' own ``__init__`` defaults.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Bound:
    """A number's range: ``ge``/``gt`` below, ``le``/``lt`` above (None: open), ``example`` a
    value to suggest; ``null`` says what None means where None is allowed."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    example: Any = None
    null: str | None = None
    each: bool = False  # the value is a list of whole numbers, each in the range

    def ok(self, value: float) -> bool:
        """Whether ``value`` lies in the range."""
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    @property
    def text(self) -> str:
        """The range in words, e.g. ``in [0, 1)`` or ``>= 1``."""
        low = f"[{_num(self.ge)}" if self.ge is not None else f"({_num(self.gt)}" if self.gt is not None else None
        high = f"{_num(self.le)}]" if self.le is not None else f"{_num(self.lt)})" if self.lt is not None else None
        if low and high:
            said = f"in {low}, {high}"
        elif low:
            said = f"{'>=' if self.ge is not None else '>'} {low[1:]}"
        else:
            said = f"{'<=' if self.le is not None else '<'} {high[:-1]}" if high else "a number"
        return f"{said} (or null: {self.null})" if self.null else said


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def bounded(default: Any, *, example: Any = None, null: str | None = None, ge: float | None = None,
            gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with a default and a range, e.g. ``latent_dim: int = bounded(16, ge=1)``."""
    bound = Bound(ge, gt, le, lt, example=default if example is None else example, null=null)
    return field(default=default, metadata={"bound": bound})


def sizes(default: list[int] | None, *, example: list[int] | None = None, null: str | None = None,
          ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None) -> Any:
    """A list-of-whole-numbers field (layer widths, channels), each in range: ``sizes([256], ge=1)``;
    ``sizes(None, example=[32, 64], null="what None means", ge=1)`` for a list that may be null."""
    shown = default if example is None else example
    assert shown is not None, "sizes(None, ...) needs an example"
    bound = Bound(ge, gt, le, lt, example="[" + ",".join(map(str, shown)) + "]", null=null, each=True)
    if default is None:
        return field(default=None, metadata={"bound": bound})
    return field(default_factory=lambda: list(default), metadata={"bound": bound})


def bound_of(schema: type, key: str) -> Bound | None:
    """The declared range of ``schema``'s field ``key`` (None: no range, or no such field)."""
    for f in dataclasses.fields(schema) if dataclasses.is_dataclass(schema) else ():
        if f.name == key:
            return f.metadata.get("bound")
    return None
