"""A parsed Dockerfile in BuildKit's AST dump form, one line per instruction:
`(run ["--mount=type=cache,target=/c"] "make")`, `(env "K" "v" "=")`, `(onbuild (copy "." "/"))`.

This is the view BuildKit's parser has before instructions are checked (flags are not validated,
HEALTHCHECK's type is not checked), built from pybuild's own reading: frontend.parse for lines,
continuations and heredocs, frontend.forms for flags and the exec form, and the word splitting of
frontend.instruction_words. Values are quoted as Go's `%q` quotes them. Used by the peer tests
against BuildKit's parser test data, and handy to see how a Dockerfile is read.
"""
from __future__ import annotations

from .forms import extract_flags, json_array, whitespace_words
from .instruction_words import Ctx, name_values
from .parse import ParsedDockerfile, RawInstruction

__all__ = ["go_quote", "dump_instruction", "dump_dockerfile"]

_GO_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v",
               '"': '\\"', "\\": "\\\\"}


def go_quote(s: str) -> str:
    """`s` as Go's strconv.Quote writes it (an undecodable byte, kept as a surrogate escape, as
    `\\xNN`)."""
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif 0xDC80 <= o <= 0xDCFF:
            out.append(f"\\x{o - 0xDC00:02x}")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\x{o:02x}")
        elif ch == " " or ch.isprintable():
            out.append(ch)
        elif o < 0x10000:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _maybe_json(rest: str) -> list[str]:
    if not rest:
        return []
    js = json_array(rest)
    return js if js is not None else [rest]


def _healthcheck(rest: str) -> list[str]:
    parts = rest.split(None, 1)
    if not parts:
        return []
    return [parts[0], *_maybe_json(parts[1] if len(parts) > 1 else "")]


def _args(raw: RawInstruction, rest: str, escape: str) -> list[str]:
    """The argument nodes of one instruction (flags already taken off)."""
    kw = raw.keyword
    if kw in ("ADD", "COPY", "VOLUME"):
        js = json_array(rest)
        return js if js is not None else whitespace_words(rest)
    if kw in ("RUN", "CMD", "ENTRYPOINT", "SHELL"):
        return _maybe_json(rest)
    if kw in ("FROM", "EXPOSE"):
        return whitespace_words(rest)
    if kw == "ARG":
        return Ctx(raw, "Dockerfile", escape).words(rest)
    if kw in ("ENV", "LABEL"):
        if not rest:
            return []
        return [part for triple in name_values(Ctx(raw, "Dockerfile", escape), rest) for part in triple]
    if kw == "HEALTHCHECK":
        return _healthcheck(rest)
    if kw in ("MAINTAINER", "STOPSIGNAL", "USER", "WORKDIR"):
        return [rest] if rest else []
    return []                      # unknown instructions: BuildKit's parser ignores their arguments


def _node(raw: RawInstruction, escape: str) -> str:
    flags, rest = extract_flags(raw.rest)
    head = raw.keyword.lower()
    if flags:
        head += " [" + " ".join(go_quote(f) for f in flags) + "]"
    if raw.keyword == "ONBUILD":
        words = rest.split(None, 1)
        if not words:
            return f"({head})"
        inner = RawInstruction(keyword=words[0].upper(), rest=words[1].strip() if len(words) > 1 else "", start_line=raw.start_line,
                               end_line=raw.end_line)
        return f"({head} {_node(inner, escape)})"
    args = _args(raw, rest, escape)
    return "(" + " ".join([head, *(go_quote(a) for a in args)]) + ")"


def dump_instruction(raw: RawInstruction, *, escape: str = "\\") -> str:
    """One instruction as BuildKit's parser dumps it. DockerfileError or NotStringArray for
    what BuildKit's parser refuses (ENV without a value, a JSON array of non-strings)."""
    return _node(raw, escape)


def dump_dockerfile(parsed: ParsedDockerfile) -> list[str]:
    return [dump_instruction(raw, escape=parsed.escape) for raw in parsed.instructions]
