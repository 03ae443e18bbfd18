"""Resource bounds a CI operator can set (issue 6): per-step memory and pid limits through a
delegated cgroup v2 — refused with the reason and the fix where there is none, never dropped
silently — and a cap on the step output passed on in memory, the full log in a file."""
from __future__ import annotations

import pytest

import test_sandbox as ts
from builder.errors import ExecError, SandboxError
from builder.sandbox import cgroups
from builder.sandbox.client import SandboxOptions, Worker
from builder.solve.ops import Mount
from builder.store.content import ContentStore

LIMITS = cgroups.Limits(memory=64 << 20, pids=32)


@pytest.fixture
def base(tmp_path):
    if ts.BUSYBOX is None:
        pytest.fail("busybox-static is not installed")
    store = ContentStore(tmp_path / "store")
    return store, (ts.make_base(store, tmp_path),)


def test_step_limits_fork_bomb_and_memory_hog_stopped_or_refused_with_the_reason(tmp_path, base):
    """Where this process's cgroup v2 is delegated, a fork bomb stops at the pid limit and a
    memory hog is killed at the memory limit; elsewhere (cgroup v1, no controllers, not
    writable) asking for a limit refuses the build with the reason and the fix, and not asking
    builds as before."""
    store, chain = base
    reason = cgroups.probe(LIMITS)
    opts = SandboxOptions(root=tmp_path / "root", step_memory=LIMITS.memory, step_pids=LIMITS.pids)
    if reason is None:       # a delegated cgroup v2 (not the case on the CI host of this writing)
        with Worker(store, opts) as w:
            with pytest.raises(ExecError):
                ts.run(w, chain, ts.sh("i=0; while [ $i -lt 64 ]; do sleep 5 & i=$((i+1)); done; wait"))
            tmpfs = (Mount(type="tmpfs", target="/t"),)     # tmpfs pages count against the step
            with pytest.raises(ExecError, match="memory limit"):
                ts.run(w, chain, ts.sh("head -c 200000000 /dev/zero > /t/x", mounts=tmpfs))
        return
    with pytest.raises(SandboxError) as ei:
        Worker(store, opts).__enter__()
    msg = str(ei.value)
    assert "cannot limit RUN steps" in msg and "Delegate=yes" in msg and "or leave the step limits unset" in msg
    assert reason in msg
    with Worker(store, SandboxOptions(root=tmp_path / "root")) as w:
        assert ts.run(w, chain, ts.sh("echo ok"))[1] == "ok\n"


def test_flooding_step_output_is_clipped_in_memory_and_kept_in_the_log_file(tmp_path, base):
    store, chain = base
    logs = tmp_path / "logs"
    logs.mkdir()
    opts = SandboxOptions(root=tmp_path / "root", step_log_limit=4096, step_log_dir=logs)
    with Worker(store, opts) as w:
        out: list[bytes] = []
        w.run_exec(base=chain, op=ts.sh("i=0; while [ $i -lt 2000 ]; do echo line-$i-xxxxxxxxxxxxxxxxxxxxxxxxxx; "
                                        "i=$((i+1)); done"),
                   mount_sources={}, secrets={}, output=out.append)
        got = b"".join(out)
        assert len(got) < 4096 + 300 and b"[output clipped, log limit 4096 bytes reached" in got
        assert str(logs / "step-1.log").encode() in got
        full = (logs / "step-1.log").read_bytes().splitlines()
        assert len(full) == 2000 and full[-1].startswith(b"line-1999-")
        # Below the limit nothing is clipped.
        out.clear()
        w.run_exec(base=chain, op=ts.sh("echo short"), mount_sources={}, secrets={}, output=out.append)
        assert b"".join(out) == b"short\n" and (logs / "step-2.log").read_bytes() == b"short\n"
