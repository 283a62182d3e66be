"""Numbers as text: the one cell formatter and the one markdown table every report, bench and log uses."""

from __future__ import annotations

import math
from typing import Any, Sequence


def cell(v: Any, digits: int | None = None) -> str:
    """A table cell: ``digits`` fixed decimals when given (ints too), else 4 significant digits below 1,000 and
    thousands separators above; ``None`` is "n/a", non-finite floats print as themselves."""
    if v is None:
        return "n/a"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, (int, float)) and digits is not None:
        return str(v) if math.isnan(v) or math.isinf(v) else f"{v:,.{digits}f}"
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v == 0:
            return "0"
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table; cells already strings are kept, others go through ``cell``."""
    def fmt(v: Any) -> str:
        return (v if isinstance(v, str) else cell(v)).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
