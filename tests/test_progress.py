import io

from builder.progress import LogEvent, PlainRenderer, TtyRenderer, VertexEvent, renderer_for, null_sink


def events():
    return [VertexEvent(vertex="a", name="[1/2] FROM x", status="started", time=0.0),
            VertexEvent(vertex="a", name="[1/2] FROM x", status="done", time=0.5),
            VertexEvent(vertex="b", name="[2/2] RUN make", status="cached", time=0.6)]


def test_plain_marks_cached_steps_like_buildkit():
    out = io.StringIO()
    r = PlainRenderer(out)
    for e in events():
        r(e)
    assert out.getvalue().splitlines() == ["#1 [1/2] FROM x", "#1 DONE 0.5s", "#2 [2/2] RUN make", "#2 CACHED"]


def test_tty_redraws_in_place_and_ends_with_a_full_frame():
    out = io.StringIO()
    r = TtyRenderer(out)
    r(VertexEvent(vertex="a", name="[1/1] RUN x", status="started", time=0.0))
    r(LogEvent(vertex="a", name="[1/1] RUN x", data=b"hello\n"))
    r(VertexEvent(vertex="a", name="[1/1] RUN x", status="done", time=1.0))
    text = out.getvalue()
    last = text.rsplit("\x1b[J", 1)[-1]
    assert last.startswith("[+] Building") and "(1/1)" in last and "1.0s" in last


def test_renderer_choice():
    assert renderer_for("quiet", io.StringIO()) is null_sink
    assert isinstance(renderer_for("auto", io.StringIO()), PlainRenderer)   # not a terminal
    assert isinstance(renderer_for("tty", io.StringIO()), TtyRenderer)
