"""Dockerfile text -> raw instructions with line ranges, read line by line as BuildKit's parser
(dockerfile 1.19) reads it.

* Parser directives (`# escape=`, `# syntax=`, `# check=`) are read from the top of the file
  until the first line that is not one; only `escape` matters here (` or backslash).
* A line is continued when it ends with an unescaped escape character, optionally followed by
  blanks; `\\\\` at the end (an escaped escape) is text, not a continuation. Comment lines and
  whitespace-only lines inside a continuation are skipped; the continued lines are joined as
  they are (their leading blanks kept). A continuation at the end of the file just ends.
* The keyword is the first word; `rest` is the text after it (both ends stripped).
* Heredocs (`RUN <<EOF`, `COPY <<A <<'B' /dst`, `<<-`, quoted delimiters, `3<<EOF`, a space
  after `<<`) are read for RUN, COPY and ADD, and for an ONBUILD of one of them, unless the
  instruction is in exec (JSON) form. Their bodies follow the instruction line, in order.
* A file without any instruction is an error, as in BuildKit.

Line numbers are 1-based; `end_line` includes heredoc bodies.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from builder.errors import DockerfileError

from .forms import NotStringArray, extract_flags, json_array
from .shell import ExpansionError, split_raw_words

__all__ = ["Heredoc", "RawInstruction", "ParsedDockerfile", "parse_dockerfile", "parse_line", "heredocs_in",
           "join_heredoc_words"]

HEREDOC_KEYWORDS = frozenset({"RUN", "COPY", "ADD"})
_DIRECTIVE = re.compile(r"^#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=\s*(.+?)\s*$")
_KNOWN_DIRECTIVES = frozenset({"escape", "syntax", "check"})
_HEREDOC_WORD = re.compile(r"^(\d*)<<(-?)(.*)$", re.S)
_HEREDOC_OPERATOR = re.compile(r"^\d*<<-?$")
_KEYWORD_SPLIT = re.compile(r"[\t\v\f\r ]+")


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
    escape = "\\"
    seen: set[str] = set()
    for lineno, line in enumerate(lines, start=1):
        m = _DIRECTIVE.match(line.lstrip())
        if not m or m.group(1).lower() not in _KNOWN_DIRECTIVES:
            break
        name, value = m.group(1).lower(), m.group(2)
        if name in seen:
            raise DockerfileError(f"only one {name} parser directive can be used", filename=filename, line=lineno)
        seen.add(name)
        if name == "escape":
            if value not in ("\\", "`"):
                raise DockerfileError(f"invalid escape token {value!r} does not match ` or \\",
                                      filename=filename, line=lineno)
            escape = value
    return escape


def _continues(line: str, escape: str) -> tuple[str, bool]:
    """The line without its continuation mark, and whether it is continued: it ends (before
    optional blanks) with an odd number of escape characters."""
    body = line.rstrip(" \t")
    run = len(body) - len(body.rstrip(escape))
    if run % 2 == 1:
        return body[:-1], True
    return line, False


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _heredoc_name(raw: str) -> tuple[str, bool]:
    """The delimiter named by a heredoc word (quotes removed, escapes applied, `$` kept) and
    whether the body is expanded (no quote in the word). ExpansionError for an unclosed quote."""
    out: list[str] = []
    quote = ""
    quoted = False
    i = 0
    while i < len(raw):
        c = raw[i]
        if c == "\\" and quote != "'" and i + 1 < len(raw):
            out.append(raw[i + 1])
            i += 2
            continue
        if quote and c == quote:
            quote = ""
        elif not quote and c in "'\"":
            quote, quoted = c, True
        else:
            out.append(c)
        i += 1
    if quote:
        raise ExpansionError(f"unterminated quote in heredoc delimiter {raw!r}")
    return "".join(out), not quoted


def join_heredoc_words(words: list[str]) -> list[str]:
    """Raw words with a heredoc operator standing alone (`<<`, `<<-`, `3<<`) joined to the word
    after it: `<<  EOF` names the heredoc EOF, as in BuildKit."""
    out: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        if _HEREDOC_OPERATOR.match(word) and i + 1 < len(words) and "<" not in words[i + 1]:
            word += words[i + 1]
            i += 1
        out.append(word)
        i += 1
    return out


def heredocs_in(rest: str) -> list[tuple[str, bool, bool]]:
    """(name, expand, chomp) for each heredoc word of an instruction line. A `<<` (or `<<-`,
    `3<<`) standing alone takes the next word as its delimiter. ExpansionError (a ValueError)
    for a delimiter with an unclosed quote."""
    found = []
    for word in join_heredoc_words(split_raw_words(rest)):
        m = _HEREDOC_WORD.match(word)
        if not m or not m.group(3) or "<" in m.group(3):
            continue
        name, expand = _heredoc_name(m.group(3))
        if name:
            found.append((name, expand, m.group(2) == "-"))
    return found


def _split_command(line: str) -> tuple[str, str]:
    parts = _KEYWORD_SPLIT.split(line.strip(), maxsplit=1)
    return parts[0].upper(), (parts[1].strip() if len(parts) > 1 else "")


def _heredoc_target(keyword: str, rest: str) -> str | None:
    """The text whose words may hold heredocs: the arguments of RUN/COPY/ADD (or of the
    instruction an ONBUILD holds) when not in exec form; None when heredocs cannot appear."""
    if keyword == "ONBUILD":
        keyword, rest = _split_command(rest)
    if keyword not in HEREDOC_KEYWORDS or "<<" not in rest:
        return None
    _, args = extract_flags(rest)
    try:
        if json_array(args) is not None:
            return None
    except NotStringArray:
        return None
    return rest


def _read_bodies(lines: list[str], first: int, specs: list[tuple[str, bool, bool]], filename: str,
                 line_no: int) -> tuple[tuple[Heredoc, ...], int]:
    """The heredoc bodies starting at line index `first`, and the index after the last one."""
    i = first
    docs = []
    for name, expand, chomp in specs:
        content: list[str] = []
        while True:
            if i >= len(lines):
                raise DockerfileError(f"unterminated heredoc {name!r}", filename=filename, line=line_no)
            raw = lines[i].rstrip("\r")
            i += 1
            if (raw.lstrip("\t") if chomp else raw) == name:
                break
            content.append(raw + "\n")
        docs.append(Heredoc(name=name, content="".join(content), expand=expand, chomp=chomp))
    return tuple(docs), i


def _logical_line(lines: list[str], i: int, escape: str) -> tuple[str | None, int]:
    """The instruction text starting at line index i (continuations joined), or None for a line
    that holds none (comment, blank), and the index of the next unread line."""
    raw = lines[i]
    i += 1
    if _is_comment(raw):
        return None, i
    text, more = _continues(raw.lstrip(), escape)
    if not more and not text:
        return None, i
    parts = [text]
    while more and i < len(lines):
        raw = lines[i]
        i += 1
        if _is_comment(raw) or not raw.strip():
            continue
        text, more = _continues(raw, escape)
        parts.append(text)
    return "".join(parts), i


MAX_LINE_BYTES = 65535     # BuildKit's scanner: "dockerfile line greater than max allowed size of 65535"


def _check_line_lengths(lines: list[str], filename: str) -> None:
    for n, line in enumerate(lines, 1):
        if len(line) > MAX_LINE_BYTES // 4 and len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            raise DockerfileError(f"dockerfile line greater than max allowed size of {MAX_LINE_BYTES}",
                                  filename=filename, line=n)


def parse_dockerfile(text: str, *, filename: str = "Dockerfile") -> ParsedDockerfile:
    """Tokenize a Dockerfile. Raises DockerfileError (with the line) for an unterminated heredoc,
    a bad heredoc delimiter, a bad escape directive, and a file with no instruction."""
    if text.startswith("\ufeff"):
        text = text[1:]
    lines = [l.rstrip("\r") for l in text.split("\n")]
    if lines and lines[-1] == "":
        lines.pop()
    _check_line_lengths(lines, filename)
    escape = _escape_char(lines, filename)
    out = []
    i = 0
    while i < len(lines):
        start = i + 1
        line, i = _logical_line(lines, i, escape)
        if line is None or not line.strip():
            continue
        keyword, rest = _split_command(line)
        docs: tuple[Heredoc, ...] = ()
        target = _heredoc_target(keyword, rest)
        if target is not None:
            try:
                specs = heredocs_in(target)
            except ExpansionError as e:
                raise DockerfileError(f"invalid heredoc delimiter: {e}", filename=filename, line=start) from e
            docs, i = _read_bodies(lines, i, specs, filename, start)
        out.append(RawInstruction(keyword=keyword, rest=rest, start_line=start, end_line=i, heredocs=docs))
    if not out:
        raise DockerfileError("file with no instructions", filename=filename)
    return ParsedDockerfile(escape=escape, instructions=tuple(out))


def parse_line(text: str, *, filename: str = "Dockerfile", line: int = 1) -> RawInstruction:
    """Parse one instruction given as text (ONBUILD triggers, heredoc bodies included); the
    location is the caller's."""
    parsed = parse_dockerfile(text, filename=filename)
    if len(parsed.instructions) != 1:
        raise DockerfileError(f"expected one instruction, got {text!r}", filename=filename, line=line)
    ins = parsed.instructions[0]
    return RawInstruction(keyword=ins.keyword, rest=ins.rest, start_line=line, end_line=line, heredocs=ins.heredocs)
