"""What operator tools print of user data: saga keys, reasons, dead letters' headers, event
data and who published a version come from records anyone allowed to write a topic can shape.

On a terminal, control characters in them would act: ESC sequences clear the screen, move the
cursor or recolour text, a newline forges a line of the report. `printable` escapes them (as
Python does, \\x1b, \\n, \\u202e) and leaves every printable character, non-ASCII included, as
it is. JSON output needs nothing: json.dumps escapes control characters itself.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character escaped; printable text unchanged."""
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text
    )


def printable_message(text: str) -> str:
    """An error message for a terminal: its lines kept (messages may list several problems),
    every other non-printable character in them escaped (a key or a value the user typed)."""
    return "\n".join(printable(line) for line in text.split("\n"))
