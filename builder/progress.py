"""Progress events and renderers. Library code emits events to an injected sink; only renderers
(used by the CLI) write to a terminal."""
from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, TextIO, Union


@dataclass(frozen=True, slots=True, kw_only=True)
class VertexEvent:
    vertex: str                  # vertex digest
    name: str
    status: Literal["started", "cached", "done", "error"]
    time: float = field(default_factory=time.monotonic)
    error: str = ""
    reason: str = ""             # why a step missed the cache, when known


@dataclass(frozen=True, slots=True, kw_only=True)
class LogEvent:
    vertex: str
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
        self._ids: dict[str, int] = {}
        self._start: dict[str, float] = {}
        self._lock = threading.Lock()

    def _id(self, vertex: str) -> int:
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


def renderer_for(mode: str, out: TextIO | None = None) -> ProgressSink:
    """auto/tty/plain all render plain lines for now (tty redraw is a later feature); quiet: none."""
    if mode == "quiet":
        return null_sink
    return PlainRenderer(out)
