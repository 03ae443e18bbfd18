"""Dockerfile word expansion, after BuildKit's `frontend/dockerfile/shell` lexer.

`expand_word(word, env)` processes quotes, escapes and `$` substitutions in one word as the
Dockerfile reference describes for ENV/ARG/LABEL/WORKDIR/COPY/ADD/USER/... and returns the
result; `expand_words` also splits on unquoted whitespace (EXPOSE, VOLUME).

Supported: `$V`, `${V}`, `${V:-w}`, `${V:+w}`, `${V-w}`, `${V+w}`, `${V:?msg}`, `${V?msg}`,
`${V#p}`, `${V##p}`, `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}` (p: shell glob with `*`, `?`,
`[...]`), single and double quotes, the escape character (default backslash).

`skip_quotes=True` leaves quote characters alone (heredoc bodies, BuildKit's SkipProcessQuotes).
Unset variables expand to "". Errors raise `ExpansionError` (a ValueError); callers turn it into a
DockerfileError with the line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from . import shellpattern

__all__ = ["ExpansionError", "expand_word", "expand_words", "split_raw_words", "unquote"]


class ExpansionError(ValueError):
    """A malformed substitution or an unterminated quote."""


_SPECIAL_PARAMS = frozenset("@*#?-$!")
MAX_NESTING = 100         # ${a:-${b:-…}} levels (a stated cap instead of unbounded recursion)


@dataclass(slots=True)
class _Scanner:
    text: str
    pos: int = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def next(self) -> str:
        ch = self.peek()
        if ch:
            self.pos += 1
        return ch


class _Lexer:
    """One expansion run. `split` collects words separated by unquoted whitespace."""

    def __init__(self, text: str, env: Mapping[str, str], escape: str, skip_quotes: bool, split: bool) -> None:
        self.s = _Scanner(text)
        self.env = env
        self.esc = escape
        self.skip_quotes = skip_quotes
        self.split = split
        self.depth = 0

    # -- top level
    def run(self) -> list[str]:
        words: list[str] = []
        cur: list[str] = []
        in_word = False
        while True:
            ch = self.s.peek()
            if not ch:
                break
            if self.split and ch in " \t\n\r\f\v":
                self.s.next()
                if in_word:
                    words.append("".join(cur))
                    cur, in_word = [], False
                continue
            if self.split and ch == "$":
                # an unquoted substitution is split on whitespace too (BuildKit's ProcessWords)
                self.s.next()
                value = self._dollar()
                for c in value:
                    if c in " \t\n\r\f\v":
                        if in_word:
                            words.append("".join(cur))
                            cur, in_word = [], False
                    else:
                        cur.append(c)
                        in_word = True
                continue
            in_word = True
            cur.append(self._one(stop=""))
        if in_word or not self.split:
            words.append("".join(cur))
        return words

    def _dollar(self) -> str:
        """A substitution; nested ones (`${a:-${b:-…}}`) at most MAX_NESTING deep."""
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise ExpansionError(f"substitutions nested more than {MAX_NESTING} deep")
            return self._dollar_inner()
        finally:
            self.depth -= 1

    def _one(self, stop: str) -> str:
        """Consume one unit (char, escape, quoted string or substitution) and return its value."""
        ch = self.s.next()
        if ch == self.esc:
            nxt = self.s.next()
            return nxt if nxt else ""
        if not self.skip_quotes and ch == "'":
            return self._single_quoted()
        if not self.skip_quotes and ch == '"':
            return self._double_quoted()
        if ch == "$":
            return self._dollar()
        return ch

    def _until(self, stop: str) -> str:
        """Process up to (not including) an unescaped `stop` char at this nesting level."""
        out: list[str] = []
        while True:
            ch = self.s.peek()
            if not ch:
                raise ExpansionError(f"missing '{stop}' in substitution")
            if ch == stop:
                return "".join(out)
            out.append(self._one(stop))

    def _single_quoted(self) -> str:
        out: list[str] = []
        while True:
            ch = self.s.next()
            if not ch:
                raise ExpansionError("unexpected end of statement while looking for matching single-quote")
            if ch == "'":
                return "".join(out)
            out.append(ch)

    def _double_quoted(self) -> str:
        out: list[str] = []
        while True:
            ch = self.s.peek()
            if not ch:
                raise ExpansionError("unexpected end of statement while looking for matching double-quote")
            if ch == '"':
                self.s.next()
                return "".join(out)
            if ch == "$":
                self.s.next()
                out.append(self._dollar())
                continue
            self.s.next()
            if ch == self.esc:
                nxt = self.s.peek()
                if not nxt:
                    continue
                if nxt in ('"', "$", self.esc):
                    out.append(self.s.next())
                    continue
            out.append(ch)

    # -- substitutions
    def _name(self) -> str:
        """BuildKit's processName: all leading digits form one (positional) name; a special
        parameter (@ * # ? - $ !) is a one-character name; otherwise Unicode letters, digits and
        `_`. Positional and special names are never set, so they expand to nothing."""
        out: list[str] = []
        ch = self.s.peek()
        if ch.isdecimal():
            while self.s.peek().isdecimal():
                out.append(self.s.next())
            return "".join(out)
        if ch and ch in _SPECIAL_PARAMS:
            return self.s.next()
        while self.s.peek() and (self.s.peek().isalpha() or self.s.peek().isdecimal() or self.s.peek() == "_"):
            out.append(self.s.next())
        return "".join(out)

    def _lookup(self, name: str) -> str | None:
        return self.env.get(name)

    def _dollar_inner(self) -> str:
        if self.s.peek() == "{":
            self.s.next()
            return self._braced()
        name = self._name()
        return (self._lookup(name) or "") if name else "$"

    def _braced(self) -> str:
        name = self._name()
        if not name:
            raise ExpansionError("bad substitution: expected a variable name after '${'")
        val = self._lookup(name)
        op = self.s.next()
        if op == "}":
            return val or ""
        if op == ":":
            mod = self.s.next()
            if mod not in ("-", "+", "?"):
                raise ExpansionError(f"unsupported modifier ({mod}) in substitution")
            word = self._until("}")
            self.s.next()
            return _apply_mod(name, val, mod, word, colon=True)
        if op in ("-", "+", "?"):
            word = self._until("}")
            self.s.next()
            return _apply_mod(name, val, op, word, colon=False)
        if op in ("#", "%"):
            longest = self.s.peek() == op
            if longest:
                self.s.next()
            pat = self._until("}")
            self.s.next()
            return _trim(val or "", pat, prefix=(op == "#"), longest=longest)
        if op == "/":
            all_ = self.s.peek() == "/"
            if all_:
                self.s.next()
            pat = self._until_either("/", "}")
            if self.s.next() != "/":     # BuildKit requires ${V/pattern/replacement}
                raise ExpansionError("missing '/' in ${} substitution")
            repl = self._until("}")
            self.s.next()
            return _replace(val or "", pat, repl, all_)
        raise ExpansionError(f"unsupported modifier ({op}) in substitution")

    def _until_either(self, a: str, b: str) -> str:
        out: list[str] = []
        while True:
            ch = self.s.peek()
            if not ch:
                raise ExpansionError(f"missing '{b}' in substitution")
            if ch in (a, b):
                return "".join(out)
            out.append(self._one(b))


def _apply_mod(name: str, val: str | None, mod: str, word: str, *, colon: bool) -> str:
    is_set = val is not None and (val != "" or not colon)
    if mod == "-":
        return (val or "") if is_set else word
    if mod == "+":
        return word if is_set else ""
    if not is_set:  # "?"
        raise ExpansionError(f"{name}: {word or 'is not allowed to be unset'}")
    return val or ""


def _trim(val: str, pat: str, *, prefix: bool, longest: bool) -> str:
    try:
        return shellpattern.trim(val, pat, prefix=prefix, longest=longest)
    except ValueError as e:
        raise ExpansionError(str(e)) from None


def _replace(val: str, pat: str, repl: str, all_: bool) -> str:
    try:
        return shellpattern.replace(val, pat, repl, all_=all_)
    except ValueError as e:
        raise ExpansionError(str(e)) from None


def expand_word(word: str, env: Mapping[str, str], *, escape: str = "\\", skip_quotes: bool = False) -> str:
    """Expand one word: quotes removed, escapes applied, substitutions done."""
    return _Lexer(word, env, escape, skip_quotes, split=False).run()[0]


def expand_words(text: str, env: Mapping[str, str], *, escape: str = "\\") -> list[str]:
    """Expand and split on unquoted whitespace (quoted empty strings stay as words)."""
    return _Lexer(text, env, escape, False, split=True).run()


def unquote(word: str, *, escape: str = "\\") -> str:
    """Remove quotes and escapes without expanding `$` (flag values)."""
    out: list[str] = []
    quote = ""
    i = 0
    while i < len(word):
        c = word[i]
        if c == escape and quote != "'" and i + 1 < len(word):
            out.append(word[i + 1])
            i += 2
            continue
        if quote and c == quote:
            quote = ""
        elif not quote and c in ("'", '"'):
            quote = c
        else:
            out.append(c)
        i += 1
    return "".join(out)


def split_raw_words(text: str, *, escape: str = "\\") -> list[str]:
    """Split on unquoted, unescaped whitespace, keeping quotes and escapes in the words
    (BuildKit's parseWords: ENV/LABEL/ARG key=value lists, flags)."""
    words: list[str] = []
    cur: list[str] = []
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if c == escape and quote != "'" and i + 1 < len(text):
            cur.append(c + text[i + 1])
            i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            cur.append(c)
        elif c in ("'", '"'):
            quote = c
            cur.append(c)
        elif c.isspace():
            if cur:
                words.append("".join(cur))
                cur = []
        else:
            cur.append(c)
        i += 1
    if cur:
        words.append("".join(cur))
    return words
