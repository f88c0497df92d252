"""What the service sends, made safe to show on a terminal or save as CSV.

Labels, ids, status texts and error messages come from the server (and the
labels from whoever trained the model), so none of them is trusted:

- on a terminal, control characters (C0 but the line feed, DEL, C1) and the
  bidirectional-override characters are shown as escapes (`\\x1b`), so no
  value can move the cursor, recolour, retitle or clear the terminal, or
  reorder what is shown; rich gets every value as a `Text`, which it never
  reads as markup (a label `[/x]` is text, not a closing tag);
- in a CSV file, a text cell that a spreadsheet would read as a formula (it
  starts with = + - @, a tab or a carriage return: OWASP's CSV-injection
  list) gets a leading apostrophe, unless it is a plain number such as -1.5,
  which a spreadsheet reads as that number and nothing else.

The dashboard (chalicelib/dashboard.html) applies the same two rules.
"""
from __future__ import annotations

import re

from rich.text import Text

# C0 controls but "\n" (multi-line values stay readable), DEL, C1 controls, and
# the Unicode bidirectional controls ("Trojan Source": they reorder the text
# shown around them).
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(value: object) -> str:
    """`value` as text in which every control character shows as an escape."""
    return _UNSAFE.sub(_escape, value if isinstance(value, str) else str(value))


def shown(value: object) -> Text:
    """`value` for rich: visible() and never parsed as markup."""
    return Text(visible(value))


def spreadsheet_cell(value: object) -> object:
    """A CSV cell a spreadsheet shows as text or a number, never runs as a formula."""
    if not isinstance(value, str):
        return value  # numbers (probabilities, numeric labels) stay numbers
    if value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value
