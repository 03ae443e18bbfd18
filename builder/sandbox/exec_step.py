"""RUN steps in the worker: `run_exec` prepares a writable snapshot, sets up the step's mounts,
starts the step's init (`builder.sandbox.nsinit`) with a `StepSpec`, streams its output, turns
its exit and status report into the typed errors, and commits the layer.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from builder.errors import BuildCancelled, ExecError, IdMappingError, SandboxError
from builder.image.view import LayerRef
from builder.sandbox.commit import finish_layer, relink_copied_up, remove_stubs
from builder.sandbox.context import StepContext
from builder.sandbox.initpool import kill_step
from builder.sandbox.mounts import MountEnv, exec_mounts
from builder.sandbox.netns import (NetStack, find_helper, resolv_conf, stack_problem, start_stack,
                                   wait_own_netns)
from builder.sandbox.protocol import Chunk, RunExec
from builder.sandbox.spec import RootFs, SetupFailure, SpecError, StepReport, StepSpec, parse_status_line
from builder.sandbox.userns import unmapped_reason
from builder.sandbox.views import step_dir
from builder.store.snapshot import Active

TYPE_CHECKING = False
if TYPE_CHECKING:
    from builder.sandbox.spec import Network

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TAIL_LINES = 20
SETUP_FAILED = 125       # nsinit's exit status after a setup error


@dataclass(frozen=True, slots=True, kw_only=True)
class _Outcome:
    """What a finished init left: its exit code, the tail of its output, its status lines."""
    code: int
    tail: bytes
    lines: tuple[bytes, ...]
    oom: bool = False


def run_exec(ctx: StepContext, req: RunExec) -> LayerRef | None:
    """Run `req.op` over `req.base`; the new layer, or None when the step changed nothing."""
    active = ctx.snap.prepare(req.base)
    overlay = active.rootfs.type == "overlay"
    try:
        with contextlib.ExitStack() as stack:
            sd = step_dir(ctx, stack)
            spec = _step_spec(ctx, req, active, MountEnv(ctx=ctx, sources=req.mount_sources,
                                                          secrets=req.secrets, sd=sd, stack=stack))
            helper = find_helper() if spec.network == "private" else None
            report = _check(ctx, req, _spawn(ctx, req.id, spec, stream=req.stream, helper=helper))
        remove_stubs(active, report, overlay=overlay)
        if overlay:
            relink_copied_up(active)
        return finish_layer(ctx, active)
    except BaseException:
        ctx.snap.abort(active)
        raise


def _step_spec(ctx: StepContext, req: RunExec, active: Active, menv: MountEnv) -> StepSpec:
    op = req.op
    mounts, env_extra = exec_mounts(menv, op.mounts)
    (menv.sd / "r").mkdir()
    env = list(op.env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    rf = active.rootfs
    network = _network(ctx, op.network)
    resolv = _own_copy(ctx.tmp / "resolv.conf", menv.sd)
    if network == "private":
        Path(resolv).write_bytes(resolv_conf(Path(resolv).read_bytes()))
    return StepSpec(mountpoint=str(menv.sd / "r"),
                    rootfs=RootFs(type=rf.type, lower=tuple(rf.lower), upper=rf.upper, work=rf.work, path=rf.path),
                    args=tuple(op.args), env=tuple(env + env_extra), cwd=op.cwd or "/", user=op.user,
                    network=network, mounts=tuple(mounts), hostname="buildkitsandbox",
                    etc_hosts=_own_copy(ctx.tmp / "hosts", menv.sd),
                    etc_resolv_conf=resolv,
                    idmap_size=ctx.cfg.idmap_size, setgroups=ctx.cfg.setgroups, status_fd=-1,
                    relaxed=ctx.cfg.relaxed)


def _network(ctx: StepContext, asked: str) -> Network:
    """The step's network: "default" becomes an own namespace behind the user-mode stack
    ("private"); without the stack that is an error unless the user waived `network` (then, when
    `stack_problem()` sees that it cannot start, the worker's namespace as before)."""
    if asked != "default":
        return "none" if asked == "none" else "host"
    if "network" in ctx.cfg.relaxed and stack_problem() is not None:
        return "default"       # waived: the stack could not start here (package, /dev/net/tun)
    if find_helper() is not None:
        return "private"
    raise SandboxError("cannot set up the RUN step's network: slirp4netns is not installed (Debian "
                       "package slirp4netns; see `pybuild doctor`, or waive it with "
                       "`--sandbox-relax network` to share the host's network namespace)")


def _own_copy(src: Path, sd: Path) -> str:
    """The step's own copy of a worker file it gets bound read-only (/etc/hosts, resolv.conf): a
    step that remounts it read-write changes only its copy, never what later steps see."""
    dst = sd / src.name
    shutil.copyfile(src, dst)
    return str(dst)


def _spawn(ctx: StepContext, rid: int, spec: StepSpec, *, stream: bool, helper: str | None) -> _Outcome:
    """Run one step's init with `spec`; stream its output as Chunks of request `rid`. With a
    `helper` (slirp4netns), start it for the init's own network namespace once it is made."""
    init = ctx.start_init()
    p, r_out, r_st = init.proc, init.out_r, init.status_r
    net: NetStack | None = None
    ctx.track(rid, p)
    try:
        ctx.confine(rid, p.pid)
        assert p.stdin is not None
        p.stdin.write(replace(spec, status_fd=init.child_status_fd).to_json().encode())
        p.stdin.close()
        if helper is not None and wait_own_netns(p.pid):
            net = start_stack(p.pid, helper)
        tail = _pump(ctx, rid, r_out, stream)
        code = p.wait()
        with os.fdopen(r_st, "rb") as f:
            r_st = -1
            lines = tuple(x for x in f.read().splitlines() if x.strip())
        oom = ctx.oom_killed(rid)
    finally:
        ctx.track(rid, None)
        os.close(r_out)
        if r_st >= 0:
            os.close(r_st)
        if p.poll() is None:
            kill_step(p.pid)
            p.wait()
        if net is not None:
            net.close()
        ctx.release(rid)
    return _Outcome(code=code, tail=tail, lines=lines, oom=oom)


def _pump(ctx: StepContext, rid: int, fd: int, stream: bool) -> bytes:
    """Read the step's output to EOF (sent on when `stream`); its last 32-64 KiB."""
    tail = bytearray()
    while True:
        b = os.read(fd, 65536)
        if not b:
            return bytes(tail)
        if stream:
            ctx.send(Chunk(id=rid, data=b))
        tail += b
        if len(tail) > 65536:
            del tail[:-32768]


def _check(ctx: StepContext, req: RunExec, out: _Outcome) -> StepReport:
    """The step's report, or the typed error of its failure."""
    if ctx.cancelled:
        raise BuildCancelled("build cancelled")
    report: StepReport | None = None
    for ln in out.lines:
        try:
            status = parse_status_line(ln)
        except SpecError as e:
            raise SandboxError(f"cannot set up the RUN sandbox: {e}") from None
        if isinstance(status, SetupFailure):
            if status.kind == "idmap":
                raise IdMappingError(f"{status.message}: {unmapped_reason(ctx.idmap())}")
            if status.kind == "user":
                raise SandboxError(status.message)
            raise SandboxError(f"cannot set up the RUN sandbox: {status.message}")
        report = status
    text = out.tail.decode("utf-8", "replace")
    if report is None and out.code == SETUP_FAILED:
        raise SandboxError(f"cannot set up the RUN sandbox: {text.strip()}")
    if out.code != 0:
        out_tail = "\n".join(text.splitlines()[-TAIL_LINES:])
        cmd = " ".join(req.op.args)
        why = (f" (killed: the step went over its memory limit of {ctx.cfg.step_memory} bytes)"
               if out.oom else "")
        raise ExecError(f"process \"{cmd}\" did not complete successfully: exit code: {out.code}{why}",
                        exit_code=out.code, output_tail=out_tail)
    return report or StepReport()
