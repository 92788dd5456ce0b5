"""Bounded text: error messages and tracebacks are capped before they are stored or shown.

A task can raise an exception whose message is megabytes long (a response body,
a repr of a huge object). Stored whole, it would be copied into the result
record, the dead letter, the log and every page that lists it. Every place that
stores or shows an error passes it through :func:`cap_text` first: the head and
the tail are kept (the message and the innermost frames), with a note of what
was cut between them.
"""

from __future__ import annotations

__all__ = ["ERROR_TEXT_LIMIT", "cap_text"]

ERROR_TEXT_LIMIT = 64 * 1024
"""Characters of error text kept: head and tail, the middle cut out."""


def cap_text(text: str, limit: int = ERROR_TEXT_LIMIT) -> str:
    """``text`` when it has at most ``limit`` characters, else its head and tail with a note.

    The result is never longer than ``limit`` (for ``limit`` >= 200), and always valid
    UTF-8: lone surrogates (which no store can write) are spelled as ``\\udXXX``.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(text) <= limit:
        return text
    note_room = 80
    keep = max(limit - note_room, 2)
    head = keep * 3 // 4  # the message and the outer frames
    tail = keep - head  # the innermost frames, where it was raised
    cut = len(text) - head - tail
    note = f"\n[... {cut:,} characters cut ...]\n"
    return f"{text[:head]}{note}{text[len(text) - tail :]}"
