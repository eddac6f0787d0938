"""The code blocks of README.md and docs/*.md that talk to the service, as a user would paste them.

A block talks to the service when its code (comments aside) names port 3000, where `make serve`
listens. Such a block is either run by tests/integration/service/test_service_docs_examples.py
(a `bash` or `python` block, run in the repository root against a real `bentoml serve`, its
address rewritten to the test server's) or excluded by a marker on the line right above its
fence, with the reason:

    <!-- docs-test: skip (needs Docker) -->

In a bash block, a comment that starts with `{` or `[`, at the end of a command or on the lines
right after it, is the answer the docs show for that command.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import REPO_ROOT

DOCUMENTS = (REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md")))
# The languages the test knows how to run.
RUNNERS = ("bash", "python")
SERVICE_ADDRESS = "127.0.0.1:3000"
SKIP = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->\s*$")
MARKER = re.compile(r"<!--\s*docs-test\b")
FENCE = re.compile(r"^```(?P<language>[\w+-]*)\s*$")
# Port 3000 in code: a URL, a `host:port`, Docker's `-p 3000:3000`.
SERVICE_PORT = re.compile(r"(?<![\w.])(?:localhost:|127\.0\.0\.1:|0\.0\.0\.0:)?3000\b")
# A `#` comment in bash or Python: at the start of a line or after a blank.
COMMENT = re.compile(r"(?:^|\s)#\s?(?P<comment>.*)$")


@dataclass(frozen=True)
class Command:
    """One command of a bash block (continuation lines joined) and the answer shown for it."""

    text: str
    documented: tuple[str, ...]


@dataclass(frozen=True)
class Block:
    """A fenced code block: where it is, its language, its code and why it is not run, if so."""

    path: Path
    line: int  # of the opening fence, counting from 1
    language: str
    code: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        return _where(self.path, self.line)

    def talks_to_service(self) -> bool:
        code = "\n".join(COMMENT.sub("", line) for line in self.code.splitlines())
        return SERVICE_PORT.search(code) is not None

    def runnable(self) -> bool:
        return self.talks_to_service() and self.skip_reason is None and self.language in RUNNERS

    def code_for(self, address: str) -> str:
        """The code with the service's address replaced by `address` (`127.0.0.1:PORT`)."""
        return self.code.replace(SERVICE_ADDRESS, address).replace("localhost:3000", address)

    def commands(self) -> list[Command]:
        """The commands of a bash block, with the answers its comments show for each."""
        commands: list[tuple[str, list[str]]] = []
        pending = ""
        for line in self.code.splitlines():
            match = COMMENT.search(line)
            code = line[: match.start()] if match else line
            comment = match["comment"].strip() if match else ""
            if pending or code.strip():
                pending += code.rstrip().removesuffix("\\")
                if code.rstrip().endswith("\\"):
                    continue
                commands.append((" ".join(pending.split()), []))
                pending = ""
            if commands and comment.startswith(("{", "[")):
                commands[-1][1].append(comment)
        return [Command(text, tuple(documented)) for text, documented in commands]


class MarkerError(ValueError):
    """A `docs-test` marker that is malformed or not right above a fence."""


def blocks(path: Path) -> list[Block]:
    """Every fenced code block of the markdown file `path`, with its skip marker if it has one."""
    lines = path.read_text().splitlines()
    found: list[Block] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if MARKER.search(line):
            _check_marker(path, lines, index)
        fence = FENCE.match(line)
        if not fence:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        above = SKIP.match(lines[index - 1]) if index else None
        code = "\n".join(lines[index + 1 : end]) + "\n"
        reason = above["reason"].strip() if above else None
        found.append(Block(path, index + 1, fence["language"], code, reason))
        index = end + 1
    return found


def _check_marker(path: Path, lines: list[str], index: int) -> None:
    where = _where(path, index + 1)
    if not SKIP.match(lines[index]):
        raise MarkerError(f"{where}: write the marker as `<!-- docs-test: skip (why) -->`")
    if index + 1 >= len(lines) or not FENCE.match(lines[index + 1]):
        raise MarkerError(f"{where}: a docs-test marker must be right above a ``` fence")


def _where(path: Path, line: int) -> str:
    """`path:line`, the path relative to the repository when it is inside it."""
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return f"{shown}:{line}"


def service_blocks() -> list[Block]:
    """The blocks of README.md and docs/*.md that talk to the service, in reading order."""
    return [block for path in DOCUMENTS for block in blocks(path) if block.talks_to_service()]
