"""Dispatch of the metadata instructions: they change the stage's config and history only
(WORKDIR also adds a Mkdir vertex, as BuildKit does). One function per instruction."""
from __future__ import annotations

import json
import re
import signal

from builder.image.oci import Healthcheck
from builder.solve.ops import Chown, FileOp, Mkdir

from . import instructions as I
from .convert_state import StageState

__all__ = ["dispatch_meta", "go_quote_list"]


def go_quote_list(args: tuple[str, ...] | list[str]) -> str:
    """Go's `%q` of a []string, as BuildKit writes CMD/ENTRYPOINT history: ["a" "b"]."""
    return "[" + " ".join(json.dumps(a, ensure_ascii=False) for a in args) + "]"


def _env(st: StageState, c: I.Env) -> None:
    pairs = [(st.expand(c, k), st.expand(c, v)) for k, v in c.pairs]   # all use the old values
    cfg = st.config
    for k, v in pairs:
        cfg = cfg.with_env(k, v)
        st.arg_overrides.pop(k, None)
    st.config = cfg
    st.record("ENV " + " ".join(f"{k}={v}" for k, v in pairs))


def _arg(st: StageState, c: I.Arg) -> None:
    parts = []
    for key, default in c.pairs:
        value: str | None
        if key in st.build_args:
            value = st.build_args[key]
        elif default is not None:
            value = st.expand(c, default)
        elif key in st.meta_args:
            value = st.meta_args[key]
        else:
            value = None
        st.args.pop(key, None)
        st.args[key] = value
        if value is not None and key in st.config.env_dict():
            # BuildKit 20.10: an ARG declared after an ENV of the same name wins for expansion
            # and RUN, while the image config keeps the ENV value.
            st.arg_overrides[key] = value
        parts.append(key if default is None else f"{key}={st.expand(c, default)}")
    st.record("ARG " + " ".join(parts))


def _label(st: StageState, c: I.Label) -> None:
    labels = dict(st.config.labels)
    pairs = [(st.expand(c, k), st.expand(c, v)) for k, v in c.pairs]
    labels.update(pairs)
    st.set_config(labels=tuple(sorted(labels.items())))
    st.record("LABEL " + " ".join(f"{k}={v}" for k, v in pairs))


def _workdir(st: StageState, c: I.Workdir) -> None:
    raw = st.expand(c, c.path)
    # BuildKit keeps an absolute WORKDIR as written (a trailing "/" included) and joins and
    # cleans a relative one; the directory it creates is the cleaned path either way.
    wd = raw if raw.startswith("/") else st.resolve_path(raw)
    st.set_config(working_dir=wd)
    wd = st.resolve_path(wd)
    if wd == "/":
        st.record(f"WORKDIR {wd}")
        return
    chown = None
    if st.config.user:
        user, _, group = st.config.user.partition(":")
        chown = Chown(user=user, group=group)
    op = FileOp(actions=(Mkdir(path=wd, mode=0o755, make_parents=True, chown=chown),))
    st.vertex = st.vertex_for(c, op, (st.vertex,), f"WORKDIR {wd}")
    st.record(f"WORKDIR {wd}", st.vertex)


def _user(st: StageState, c: I.User) -> None:
    user = st.expand(c, c.user)
    st.set_config(user=user)
    st.record(f"USER {user}")


_PORT = re.compile(r"^(\d+)(?:-(\d+))?(?:/(tcp|udp|sctp|))?$", re.I)   # "80/" is 80/tcp


def _expose(st: StageState, c: I.Expose) -> None:
    ports = set(st.config.exposed_ports)
    new: list[str] = []
    for raw in c.ports:
        for word in st.expand_split(c, raw):
            # `[ip:]hostPort:containerPort`: BuildKit warns and keeps the container port
            m = _PORT.match(word.rpartition(":")[2])
            if not m:
                raise st.error(c, f"invalid containerPort: {word}")
            lo = int(m.group(1))
            hi = int(m.group(2) or lo)
            if hi < lo or hi > 65535:
                raise st.error(c, f"invalid port range: {word}")
            proto = (m.group(3) or "tcp").lower()
            new.extend(f"{p}/{proto}" for p in range(lo, hi + 1))
    ports.update(new)
    st.set_config(exposed_ports=tuple(sorted(ports)))
    st.record("EXPOSE map[" + " ".join(f"{p}:{{}}" for p in sorted(set(new))) + "]")


def _volume(st: StageState, c: I.Volume) -> None:
    # each word, JSON or not, is expanded as one word: `ENV V="/x /y"` + `VOLUME $V` is one volume
    paths = [st.expand(c, p) for p in c.paths]
    if any(not p.strip() for p in paths):
        raise st.error(c, "VOLUME specified can not be an empty string")
    vols = set(st.config.volumes) | set(paths)
    st.set_config(volumes=tuple(sorted(vols)))
    st.record("VOLUME [" + " ".join(paths) + "]")


def _command(st: StageState, cmd: I.CommandLine) -> tuple[str, ...]:
    return cmd.args if cmd.json else (*st.shell, *cmd.args)


def _cmd(st: StageState, c: I.Cmd) -> None:
    st.set_config(cmd=_command(st, c.command))
    st.cmd_set = True
    st.record(f"CMD {go_quote_list(c.command.args)}")


def _entrypoint(st: StageState, c: I.Entrypoint) -> None:
    st.set_config(entrypoint=_command(st, c.command))
    if not st.cmd_set:
        st.set_config(cmd=None)
    st.record(f"ENTRYPOINT {go_quote_list(c.command.args)}")


_SIGNALS = frozenset(s.name[3:] for s in signal.Signals if s.name.startswith("SIG") and "_" not in s.name)


def _valid_signal(sig: str) -> bool:
    """Go's signal.ParseSignal: a positive number, or a name with or without SIG (any case),
    including SIGRTMIN+n / SIGRTMAX-n."""
    if sig.isdigit():
        return int(sig) > 0
    name = sig.upper().removeprefix("SIG")
    m = re.fullmatch(r"RT(MIN|MAX)([+-]\d+)?", name)
    return name in _SIGNALS or m is not None


def _stopsignal(st: StageState, c: I.Stopsignal) -> None:
    sig = st.expand(c, c.signal)
    if not _valid_signal(sig):
        raise st.error(c, f"Invalid signal: {sig}")
    st.set_config(stop_signal=sig)
    st.record(f"STOPSIGNAL {sig}")


def _healthcheck(st: StageState, c: I.Healthcheck) -> None:
    hc = Healthcheck(test=c.test, interval=c.interval, timeout=c.timeout, start_period=c.start_period,
                     start_interval=c.start_interval, retries=c.retries)
    st.set_config(healthcheck=hc)
    st.record(f"HEALTHCHECK {go_quote_list(c.test)}")


def _shell(st: StageState, c: I.Shell) -> None:
    st.set_config(shell=c.args)
    st.record("SHELL [" + " ".join(c.args) + "]")


def _onbuild(st: StageState, c: I.Onbuild) -> None:
    st.set_config(onbuild=(*st.config.onbuild, c.expression))
    st.record(f"ONBUILD {c.expression}")


def _maintainer(st: StageState, c: I.Maintainer) -> None:
    st.author = c.name
    st.record(f"MAINTAINER {c.name}")


_META = {I.Env: _env, I.Arg: _arg, I.Label: _label, I.Workdir: _workdir, I.User: _user, I.Expose: _expose,
         I.Volume: _volume, I.Cmd: _cmd, I.Entrypoint: _entrypoint, I.Stopsignal: _stopsignal,
         I.Healthcheck: _healthcheck, I.Shell: _shell, I.Onbuild: _onbuild, I.Maintainer: _maintainer}


def dispatch_meta(st: StageState, c: I.Instruction) -> bool:
    """Apply a metadata instruction; False if `c` is not one (RUN, COPY, ADD, FROM)."""
    fn = _META.get(type(c))
    if fn is None:
        return False
    fn(st, c)  # type: ignore[operator]
    return True
