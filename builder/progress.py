"""Progress events and renderers. Library code emits events to an injected sink; only renderers
(used by the CLI) write to a terminal."""
from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, TextIO, Union

from builder.image.digest import Digest


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexEvent:
    vertex: Digest               # vertex digest
    name: str
    status: Literal["started", "cached", "done", "error"]
    time: float = field(default_factory=time.monotonic)
    error: str = ""
    reason: str = ""             # why a step missed the cache, when known


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent:
    vertex: Digest
    name: str
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEvent:
    text: str


Event = Union[VertexEvent, LogEvent, MessageEvent]
ProgressSink = Callable[[Event], None]


def null_sink(_: Event) -> None:
    return None


class PlainRenderer:
    """BuildKit's `--progress=plain` look: `#N [stage 1/2] RUN ...`, `#N CACHED`, `#N DONE 0.2s`."""

    def __init__(self, out: TextIO | None = None, *, show_misses: bool = True) -> None:
        self._out = out or sys.stderr
        self._verbose_misses = show_misses
        self._ids: dict[Digest, int] = {}
        self._start: dict[Digest, float] = {}
        self._lock = threading.Lock()

    def _id(self, vertex: Digest) -> int:
        if vertex not in self._ids:
            self._ids[vertex] = len(self._ids) + 1
        return self._ids[vertex]

    def __call__(self, ev: Event) -> None:
        with self._lock:
            if isinstance(ev, MessageEvent):
                self._out.write(ev.text + "\n")
            elif isinstance(ev, LogEvent):
                n = self._id(ev.vertex)
                for line in ev.data.decode(errors="replace").splitlines():
                    self._out.write(f"#{n} {line}\n")
            else:
                n = self._id(ev.vertex)
                if ev.status == "started":
                    self._start[ev.vertex] = ev.time
                    self._out.write(f"#{n} {ev.name}\n")
                    if ev.reason and self._verbose_misses:
                        self._out.write(f"#{n} cache miss: {ev.reason}\n")
                elif ev.status == "cached":
                    self._out.write(f"#{n} {ev.name}\n#{n} CACHED\n")
                elif ev.status == "done":
                    dt = ev.time - self._start.get(ev.vertex, ev.time)
                    self._out.write(f"#{n} DONE {dt:.1f}s\n")
                else:
                    self._out.write(f"#{n} ERROR: {ev.error}\n")
            self._out.flush()


class TtyRenderer:
    """BuildKit's tty look: a `[+] Building 1.2s (3/5)` header and one line per step, redrawn in
    place with ANSI cursor movement (at most every 100 ms; finished builds draw a final frame).
    The log lines of a running step are shown under it (the last few only)."""

    TAIL = 5

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._t0 = time.monotonic()
        self._order: list[Digest] = []
        self._rows: dict[Digest, dict] = {}
        self._drawn = 0
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, ev: Event) -> None:
        with self._lock:
            if isinstance(ev, MessageEvent):
                self._clear()
                self._out.write(ev.text + "\n")
            elif isinstance(ev, LogEvent):
                row = self._row(ev.vertex, ev.name)
                row["log"] = (row["log"] + ev.data.decode(errors="replace").splitlines())[-self.TAIL:]
            else:
                row = self._row(ev.vertex, ev.name)
                if ev.status == "started":
                    row["start"] = ev.time
                elif ev.status in ("done", "cached", "error"):
                    row["end"] = ev.time
                    row["state"] = ev.status
                    row["log"] = [] if ev.status != "error" else row["log"]
            now = time.monotonic()
            finished = bool(self._rows) and all("end" in r for r in self._rows.values())
            if finished or now - self._last >= 0.1:
                self._draw(now)

    def _row(self, vertex: Digest, name: str) -> dict:
        if vertex not in self._rows:
            self._order.append(vertex)
            self._rows[vertex] = {"name": name, "start": time.monotonic(), "log": []}
        return self._rows[vertex]

    def _clear(self) -> None:
        if self._drawn:
            self._out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, now: float) -> None:
        self._clear()
        done = sum(1 for r in self._rows.values() if "end" in r)
        lines = [f"[+] Building {now - self._t0:.1f}s ({done}/{len(self._rows)})"]
        width = max(40, shutil.get_terminal_size((100, 24)).columns - 1)   # a wrapped line breaks the redraw
        for v in self._order:
            r = self._rows[v]
            state = r.get("state")
            dt = r.get("end", now) - r["start"]
            tail = "CACHED" if state == "cached" else ("ERROR" if state == "error" else f"{dt:.1f}s")
            name_w = width - len(tail) - 5
            lines.append(f" => {r['name'][:name_w]:<{name_w}} {tail}")
            lines += [f" => => {l}"[:width] for l in r["log"]]
        self._out.write("\n".join(lines) + "\n")
        self._out.flush()
        self._drawn = len(lines)
        self._last = now


def renderer_for(mode: str, out: TextIO | None = None) -> ProgressSink:
    """plain: BuildKit's plain lines; tty: the redrawn view; auto: tty when `out` is a terminal;
    quiet: nothing."""
    out = out or sys.stderr
    if mode == "quiet":
        return null_sink
    if mode == "tty" or (mode == "auto" and out.isatty()):
        return TtyRenderer(out)
    return PlainRenderer(out)
