"""aecli's one table writer: rows as a GitHub markdown table (what the commands print and the
README quotes) and the same rows as CSV. No torch here: ``aecli.use.report`` answers fast."""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aecli.store.atomic import write_csv as store_csv

MARKDOWN_SPECIAL = re.compile(r"[\\|<>`]")  # escaped in cells: column breaks, HTML, code
CELL_WIDTH = 160  # characters of one markdown cell (a failed job's error); the CSV has it all


def cell(value: Any, width: int = CELL_WIDTH) -> str:
    """One markdown cell: None empty, floats to 5 significant digits (thousands and up as whole
    numbers), whitespace folded, ``\\ | < > ` `` escaped (a value shows as text, never as markup:
    a swept value from someone else's sweep dir), at most ``width`` characters."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 1000 else f"{value:.5g}"
    text = MARKDOWN_SPECIAL.sub(r"\\\g<0>", " ".join(str(value).split()))  # text, never markup
    return text if len(text) <= width else text[: width - 1] + "…"


def markdown(rows: Sequence[Sequence[Any]], header: Sequence[str], numbers_right: bool = True) -> str:
    """A markdown table of ``rows`` under ``header``, each value through ``cell``. The first
    column is left-aligned; the others right-aligned (columns of numbers) unless
    ``numbers_right`` is False."""
    rule = "|---|" + ("---:|" if numbers_right else "---|") * (len(header) - 1)
    lines = ["| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_records(records: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """``records`` (one mapping per row) as a left-aligned markdown table of ``columns``."""
    return markdown([[r[c] for c in columns] for r in records], columns, numbers_right=False)


def write_csv(records: Sequence[Mapping[str, Any]], path: Path) -> None:
    """``records`` as CSV: a header of the first record's keys, then one line per record; written
    atomically, text quoted and formula-like text neutralised (``aecli.store.atomic.write_csv``)."""
    header = list(records[0])
    store_csv(Path(path), header, ([r.get(k) for k in header] for r in records))
