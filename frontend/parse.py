"""The only importer of dockerfile_parse: Dockerfile text -> raw instructions with line ranges.

dockerfile_parse tokenizes lines (instruction keyword, start and end line, the `# escape=`
directive, comment lines inside continuations). Around it we add what BuildKit does and it does
not: whitespace-only lines inside a continuation are skipped (not the end of the instruction),
and heredoc bodies (`RUN <<EOF`, `COPY <<EOF /dst`, several per line, `<<-` and quoted
delimiters) are cut out of the text before tokenizing, so their lines never look like
instructions. The continuation joining itself (escape char + optional blanks at the end of a
line, comment and empty lines dropped) is recomputed from the original lines so it follows
BuildKit exactly.

Line numbers in the result are 1-based.
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass

from dockerfile_parse import DockerfileParser

from builder.errors import DockerfileError

from .shell import split_raw_words
from .text import valid_utf8

__all__ = ["Heredoc", "RawInstruction", "ParsedDockerfile", "parse_dockerfile", "parse_line"]

HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_ESCAPE_DIRECTIVE = re.compile(r"^\s*#\s*escape\s*=\s*(\S*)\s*$", re.I)
_OTHER_DIRECTIVE = re.compile(r"^\s*#\s*[A-Za-z_]+\s*=.*$")
_COMMENT = re.compile(r"^\s*#")
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)(.*)$", re.S)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heredoc:
    """A heredoc body. `content` holds every body line with its newline; `expand` is False when
    the delimiter was quoted; `chomp` for `<<-` (leading tabs removed)."""
    name: str
    content: str
    expand: bool = True
    chomp: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class RawInstruction:
    """One instruction: upper-case keyword, the rest of the joined line, its line range
    (heredoc bodies included) and heredocs in order."""
    keyword: str
    rest: str
    start_line: int
    end_line: int
    heredocs: tuple[Heredoc, ...] = ()

    @property
    def original(self) -> str:
        return f"{self.keyword} {self.rest}".rstrip()


@dataclass(frozen=True, slots=True, kw_only=True)
class ParsedDockerfile:
    escape: str
    instructions: tuple[RawInstruction, ...]


def _escape_char(lines: list[str], filename: str) -> str:
    for lineno, line in enumerate(lines, start=1):
        m = _ESCAPE_DIRECTIVE.match(line)
        if m:
            value = m.group(1)
            if value not in ("", "\\", "`"):
                raise DockerfileError(f"invalid escape token {value!r} does not match ` or \\",
                                      filename=filename, line=lineno)
            return value or "\\"
        if not _OTHER_DIRECTIVE.match(line):
            break
    return "\\"


def _continues(line: str, escape: str) -> tuple[str, bool]:
    body = line.rstrip("\r\n")
    m = re.search(re.escape(escape) + r"[ \t]*$", body)
    if m:
        return body[: m.start()], True
    return body, False


def _fix_blank_continuations(lines: list[str], escape: str, skip: set[int]) -> list[str]:
    """Whitespace-only lines inside a continuation become comment lines (BuildKit skips them)."""
    out = list(lines)
    cont = False
    for i, line in enumerate(lines):
        if i in skip:
            continue
        if cont and not line.strip():
            out[i] = "#\n"
            continue
        if _COMMENT.match(line):
            continue
        if not cont and not line.strip():
            continue
        cont = _continues(line, escape)[1]
    return out


def _joined_rest(lines: list[str], start: int, end: int, escape: str) -> str:
    parts: list[str] = []
    for i in range(start, end + 1):
        line = lines[i]
        if i == start:
            line = line.lstrip()
            line = line.split(None, 1)[1] if len(line.split(None, 1)) > 1 else ""
        elif _COMMENT.match(line) or not line.strip():
            continue
        text, more = _continues(line, escape)
        parts.append(text)
        if not more:
            break
    return "".join(parts).strip()


def heredocs_in(rest: str) -> list[tuple[str, bool, bool]]:
    """(name, expand, chomp) for each heredoc word of an instruction line."""
    found = []
    for word in split_raw_words(rest):
        m = _HEREDOC_WORD.match(word)
        if not m or not m.group(3):
            continue
        raw = m.group(3)
        name = "".join(ch for ch in raw if ch not in "'\"\\")
        if not name or "<" in name:
            continue
        found.append((name, not any(c in raw for c in "'\"\\"), m.group(2) == "-"))
    return found


def _tokenize(text: str) -> list[dict]:
    """dockerfile_parse's structure (keyword and line range of each instruction). It reads UTF-8
    only, and only the line ranges and keywords are used: undecodable bytes (surrogate escapes)
    are given to it as U+FFFD (the text itself is taken from our own lines)."""
    parser = DockerfileParser(fileobj=io.BytesIO(valid_utf8(text).encode("utf-8")))
    return sorted((s for s in parser.structure if s["instruction"] != "COMMENT"), key=lambda s: s["startline"])


def parse_dockerfile(text: str, *, filename: str = "Dockerfile") -> ParsedDockerfile:
    """Tokenize a Dockerfile. Raises DockerfileError (with the line) for an unterminated heredoc."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [l if l.endswith("\n") else l + "\n" for l in text.splitlines()]
    escape = _escape_char(lines, filename)
    if lines:
        # A continuation on the very last line ends the instruction (BuildKit runs it;
        # dockerfile-parse would drop it)
        final, cont = _continues(lines[-1], escape)
        if cont:
            lines[-1] = final + "\n"
    bodies: dict[int, tuple[int, tuple[Heredoc, ...]]] = {}   # start line (0-based) -> (end, heredocs)
    blanked: set[int] = set()
    while True:
        work = [("\n" if i in blanked else l) for i, l in enumerate(lines)]
        work = _fix_blank_continuations(work, escape, blanked)
        structure = _tokenize("".join(work))
        progressed = False
        for s in structure:
            start, end = s["startline"], s["endline"]
            if s["instruction"] not in HEREDOC_KEYWORDS or start in bodies:
                continue
            specs = heredocs_in(_joined_rest(work, start, end, escape))
            if not specs:
                continue
            docs, last = _read_bodies(lines, end + 1, specs, filename, start + 1)
            bodies[start] = (last, docs)
            blanked.update(range(end + 1, last + 1))
            progressed = True
            break
        if not progressed:
            break
    out = []
    for s in structure:
        start, end = s["startline"], s["endline"]
        last, docs = bodies.get(start, (end, ()))
        out.append(RawInstruction(keyword=s["instruction"], rest=_joined_rest(work, start, end, escape),
                                  start_line=start + 1, end_line=max(end, last) + 1, heredocs=docs))
    return ParsedDockerfile(escape=escape, instructions=tuple(out))


def _read_bodies(lines: list[str], first: int, specs: list[tuple[str, bool, bool]], filename: str,
                 line_no: int) -> tuple[tuple[Heredoc, ...], int]:
    i = first
    docs = []
    for name, expand, chomp in specs:
        content: list[str] = []
        while True:
            if i >= len(lines):
                raise DockerfileError(f"unterminated heredoc {name!r}", filename=filename, line=line_no)
            raw = lines[i].rstrip("\r\n")
            i += 1
            if (raw.lstrip("\t") if chomp else raw) == name:
                break
            content.append(raw + "\n")
        docs.append(Heredoc(name=name, content="".join(content), expand=expand, chomp=chomp))
    return tuple(docs), i - 1


def parse_line(text: str, *, filename: str = "Dockerfile", line: int = 1) -> RawInstruction:
    """Parse one instruction given as text (ONBUILD triggers); the location is the caller's."""
    parsed = parse_dockerfile(text, filename=filename)
    if len(parsed.instructions) != 1:
        raise DockerfileError(f"expected one instruction, got {text!r}", filename=filename, line=line)
    ins = parsed.instructions[0]
    return RawInstruction(keyword=ins.keyword, rest=ins.rest, start_line=line, end_line=line, heredocs=ins.heredocs)
