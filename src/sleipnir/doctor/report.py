"""The report: one line per check with its fix beneath, or one JSON object; the verdict."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Sequence

from ..checks import Check, Status

__all__ = ["failed", "render_json", "render_text"]


def failed(checks: Iterable[Check]) -> bool:
    """Whether any check failed (the command's exit status is then 1)."""
    return any(c.status is Status.FAIL for c in checks)


def _counts(checks: Sequence[Check]) -> dict[str, int]:
    return {s.value: sum(1 for c in checks if c.status is s) for s in Status}


def render_text(checks: Sequence[Check], header: str = "", columns: int = 100) -> str:
    """One line per check, ``fix:`` beneath the ones that need one, counts at the end."""
    width = max((len(c.name) for c in checks), default=0) + 2
    indent = " " * (6 + width)
    lines = [header] if header else []
    for c in checks:
        lines += textwrap.wrap(
            c.detail,
            columns,
            initial_indent=f"{c.status.value.upper():<6}{c.name:<{width}}",
            subsequent_indent=indent,
            break_on_hyphens=False,
        )
        if c.fix and c.status in (Status.WARN, Status.FAIL):
            lines += textwrap.wrap(
                f"fix: {c.fix}",
                columns,
                initial_indent=indent,
                subsequent_indent=indent + "     ",
                break_on_hyphens=False,
            )
    n = _counts(checks)
    lines.append(
        f"{n['pass']} passed, {n['warn']} warnings, {n['fail']} failed, {n['skip']} skipped"
    )
    return "\n".join(lines)


def render_json(checks: Sequence[Check], **about: object) -> str:
    """The report as one JSON object: ``ok``, ``counts``, ``checks`` and what was checked."""
    return json.dumps(
        {
            **about,
            "ok": not failed(checks),
            "counts": _counts(checks),
            "checks": [c.as_dict() for c in checks],
        },
        indent=2,
    )
