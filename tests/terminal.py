"""A terminal for the tests: a stream that says it is one, and the screen it would show."""

from __future__ import annotations

import io
import re


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def screen(text: str) -> list[str]:
    """The lines a terminal shows for ``text``: ``\\r`` returns to the start of the line,
    ``ESC[A`` moves up one line (how tqdm draws nested bars), and what follows overwrites."""
    lines: list[list[str]] = [[]]
    row = column = 0
    for token in re.split(r"(\x1b\[A|\r|\n)", text):
        if token == "\r":
            column = 0
        elif token == "\n":
            row, column = row + 1, 0
            lines.extend([] for _ in range(row + 1 - len(lines)))
        elif token == "\x1b[A":
            row = max(0, row - 1)
        elif token:
            line = lines[row]
            line.extend(" " * (column - len(line)))
            line[column : column + len(token)] = list(token)
            column += len(token)
    return [shown for shown in ("".join(line).rstrip() for line in lines) if shown]
