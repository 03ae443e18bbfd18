""".dockerignore reading: which file applies, and patterns cleaned as moby/patternmatcher's
ReadAll does. Matching the patterns is the builder's job (builder/pathmatch.py).
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["read_dockerignore", "parse_dockerignore", "go_clean"]


def go_clean(path: str) -> str:
    """Go's path.Clean: collapse "//", resolve "." and "..", no trailing slash; "" -> "."."""
    if not path:
        return "."
    rooted = path.startswith("/")
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if out and out[-1] != "..":
                out.pop()
            elif not rooted:
                out.append("..")
            continue
        out.append(part)
    text = "/".join(out)
    if rooted:
        return "/" + text
    return text or "."


def parse_dockerignore(text: str) -> tuple[str, ...]:
    """Patterns from .dockerignore text: comments (lines starting with '#') and blank lines
    dropped, whitespace trimmed, paths cleaned, a leading '/' removed, '!' exceptions kept."""
    if text.startswith("\ufeff"):
        text = text[1:]
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        pattern = line.strip()
        if not pattern:
            continue
        invert = pattern.startswith("!")
        if invert:
            pattern = pattern[1:].strip()
        if pattern:
            pattern = go_clean(pattern)
            if len(pattern) > 1 and pattern.startswith("/"):
                pattern = pattern[1:]
        out.append("!" + pattern if invert else pattern)
    return tuple(out)


def read_dockerignore(context_dir: Path, dockerfile_name: str) -> tuple[str, ...]:
    """Patterns for the main context: `<Dockerfile>.dockerignore` beside the Dockerfile if it
    exists (`dockerfile_name` absolute, or relative to `context_dir`), else
    `<context_dir>/.dockerignore`, else none."""
    dockerfile = Path(dockerfile_name)
    if not dockerfile.is_absolute():
        dockerfile = Path(context_dir) / dockerfile
    specific = dockerfile.with_name(dockerfile.name + ".dockerignore")
    for candidate in (specific, Path(context_dir) / ".dockerignore"):
        if candidate.is_file():
            return parse_dockerignore(candidate.read_text(encoding="utf-8", errors="surrogateescape"))
    return ()
