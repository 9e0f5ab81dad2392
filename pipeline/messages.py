"""Short, printable pieces of one-line error messages (user data may hold any characters)."""

from __future__ import annotations

from typing import Any, Sequence


def printable(text: Any, limit: int = 60) -> str:
    """``text`` on one line: non-printable characters replaced, long texts cut."""
    text = "".join(c if c.isprintable() else "?" for c in str(text))
    return text if len(text) <= limit else text[:limit - 3] + "..."


def plural(count: int, noun: str) -> str:
    """``"1 file"``, ``"3 files"``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def count_and_examples(names: Sequence[str], shown: int = 3) -> str:
    """``"5 files, e.g. a.png, b.png, c.png"``: a short, printable account of ``names``."""
    examples = ", ".join(printable(n) for n in names[:shown])
    return f"{plural(len(names), 'file')}, e.g. {examples}"


def key_list(mapping: dict, shown: int = 6) -> str:
    """The first ``shown`` keys of ``mapping``, printable, with the count when there are more."""
    names = ", ".join(printable(k, 40) for k in list(mapping)[:shown])
    return names + (f", ... ({len(mapping)} in all)" if len(mapping) > shown else "")
