"""Shared entry-point behaviour of the stages: logging, and user errors as one clear line + exit 2."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Callable, Sequence

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


class UserError(ValueError):
    """A request a tool refuses for a reason the user can fix; the message alone is the whole report."""


_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")   # :mod:`pipeline.x`, :func:`~pipeline.x.f`
_LITERAL = re.compile(r"``([^`]+)``")


def help_text(doc: str | None) -> str:
    """A docstring as ``--help`` shows it: plain text, without reStructuredText markup
    (``code`` -> code, :mod:`pipeline.report` -> pipeline.report, :func:`~a.b.f` -> f)."""
    def role(match: re.Match) -> str:
        target = match.group(1)
        return target.rsplit(".", 1)[-1] if match.group(0).split("`")[1].startswith("~") else target

    return _LITERAL.sub(r"\1", _ROLE.sub(role, doc or "")).strip()


def user_errors() -> tuple[type[BaseException], ...]:
    from pipeline.checkpoint import CheckpointError
    from pipeline.config import ConfigError
    from pipeline.data.images import BadImageError
    from pipeline.data.manifest import HeldOutLabelsError, ManifestError
    from pipeline.data.prepare import PrepareError
    from pipeline.guards import NonFiniteLossError
    from pipeline.io import DiskFullError   # a full disk: the message names what could not be written

    return (ConfigError, BadImageError, ManifestError, PrepareError, HeldOutLabelsError, CheckpointError,
            NonFiniteLossError, FileNotFoundError, DiskFullError, UserError)


def run(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Run a stage's ``main`` with the CPU settings of :mod:`pipeline.cpu` in force; bad input exits
    with status 2 and ``error: <message>`` on stderr."""
    from pipeline.cpu import configure_cpu

    logging.basicConfig(level=os.environ.get("SIM2REAL_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("pipeline.cpu").debug("cpu settings: %s", configure_cpu())  # also in provenance
    errors = user_errors()
    try:
        main(list(sys.argv[1:] if argv is None else argv))
    except errors as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
