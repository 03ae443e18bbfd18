"""What the worker tells a step's init, and what the init reports back (standard library only:
`builder.sandbox.nsinit` imports it and must start fast).

The worker builds one `StepSpec` per RUN step and writes `spec.to_json()` on the init's stdin;
the init parses it with `StepSpec.from_json` (every key checked: a missing or mistyped key, or a
spec of another version, raises SpecError). On its status fd the init writes JSON lines: one
`StepReport` once the root is set up, or a `SetupFailure`; `parse_status_line` reads either.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

TYPE_CHECKING = False       # typing is not imported at run time: the step init must start fast
if TYPE_CHECKING:
    from typing import Literal, TypeVar, Union
    T = TypeVar("T", bound=str)
    MountKind = Literal["bind", "overlay", "tmpfs"]
    Network = Literal["default", "none", "host", "private"]
    FailureKind = Literal["idmap", "user", "setup"]
    StatusLine = Union["StepReport", "SetupFailure"]

SPEC_VERSION = 1
_ROOT_TYPES: dict[str, Literal["overlay", "bind"]] = {"overlay": "overlay", "bind": "bind"}
_MOUNT_KINDS: dict[str, MountKind] = {"bind": "bind", "overlay": "overlay", "tmpfs": "tmpfs"}
_NETWORKS: dict[str, Network] = {"default": "default", "none": "none", "host": "host", "private": "private"}
_FAILURE_KINDS: dict[str, FailureKind] = {"idmap": "idmap", "user": "user", "setup": "setup"}
# The protections a step's init applies (see builder.sandbox.nsinit); each one the kernel or the
# environment refuses fails the step, unless the user waived it (`StepSpec.relaxed`).
PROTECTIONS = ("capabilities", "masked-paths", "network", "no-new-privs", "seccomp")


class SpecError(ValueError):
    """A spec or status line that is not what this version writes."""


def _field(d: dict[str, object], key: str, kind: type, what: str) -> object:
    if key not in d:
        raise SpecError(f"{what}: missing {key!r}")
    v = d[key]
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise SpecError(f"{what}: {key!r} must be {kind.__name__}, not {type(v).__name__}")
    return v


def _str(d: dict[str, object], key: str, what: str) -> str:
    return str(_field(d, key, str, what))


def _int(d: dict[str, object], key: str, what: str) -> int:
    v = _field(d, key, int, what)
    assert isinstance(v, int)
    return v


def _bool(d: dict[str, object], key: str, what: str) -> bool:
    return bool(_field(d, key, bool, what))


def _strs(d: dict[str, object], key: str, what: str) -> tuple[str, ...]:
    v = _field(d, key, list, what)
    assert isinstance(v, list)
    if not all(isinstance(x, str) for x in v):
        raise SpecError(f"{what}: {key!r} must be a list of strings")
    return tuple(v)


def _dict(v: object, what: str) -> dict[str, object]:
    if not isinstance(v, dict):
        raise SpecError(f"{what} must be an object, not {type(v).__name__}")
    return v


def _choice(d: dict[str, object], key: str, allowed: dict[str, T], what: str) -> T:
    v = _str(d, key, what)
    if v not in allowed:
        raise SpecError(f"{what}: {key!r} must be one of {', '.join(allowed)}, not {v!r}")
    return allowed[v]


def _relaxed(d: dict[str, object], what: str) -> tuple[str, ...]:
    v = _strs(d, "relaxed", what)
    bad = [x for x in v if x not in PROTECTIONS]
    if bad:
        raise SpecError(f"{what}: unknown protection(s) {', '.join(bad)} (known: {', '.join(PROTECTIONS)})")
    return v


@dataclass(frozen=True, slots=True, kw_only=True)
class RootFs:
    """The step's writable root: an overlay (`lower` top-first, `upper`, `work`) or a directory
    (`path`) bound in place."""
    type: Literal["overlay", "bind"]
    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    path: str = ""

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "RootFs":
        w = "rootfs"
        if _choice(d, "type", _ROOT_TYPES, w) == "bind":
            return cls(type="bind", path=_str(d, "path", w))
        return cls(type="overlay", lower=_strs(d, "lower", w), upper=_str(d, "upper", w), work=_str(d, "work", w))


@dataclass(frozen=True, slots=True, kw_only=True)
class StepMount:
    """One mount on the step's root at `target` (a path inside it):
    bind: `src` (a host path), `readonly`, `file` (the target is a file, not a directory);
    overlay: `lower` (top-first) with `upper`/`work` (read-only when `upper` is empty);
    tmpfs: `size` bytes (0: unlimited)."""
    kind: MountKind
    target: str
    src: str = ""
    readonly: bool = True
    file: bool = False
    lower: tuple[str, ...] = ()
    upper: str = ""
    work: str = ""
    size: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> "StepMount":
        w = "mount"
        kind = _choice(d, "kind", _MOUNT_KINDS, w)
        return cls(kind=kind, target=_str(d, "target", w), src=_str(d, "src", w),
                   readonly=_bool(d, "readonly", w), file=_bool(d, "file", w), lower=_strs(d, "lower", w),
                   upper=_str(d, "upper", w), work=_str(d, "work", w), size=_int(d, "size", w))


@dataclass(frozen=True, slots=True, kw_only=True)
class StepSpec:
    """One RUN step: the process (`args`, `env` as KEY=VALUE, `cwd`, `user` as in USER), its
    root (`rootfs` mounted at `mountpoint`), its `mounts`, `network` ("none": an own network
    namespace with lo only; "private": an own one whose tap0 the worker's user-mode stack
    configures, the init waits for it; "default"/"host": the worker's), `hostname`, the worker's /etc/hosts and resolv.conf to bind, the id
    map it runs under (`idmap_size` ids, `setgroups` allowed or not), the fd of the status pipe, and
    the `PROTECTIONS` the user waived (`relaxed`: the step goes on without those the environment
    refuses, instead of failing)."""
    version: int = SPEC_VERSION
    mountpoint: str
    rootfs: RootFs
    args: tuple[str, ...]
    env: tuple[str, ...]
    cwd: str = "/"
    user: str = ""
    network: Network = "default"
    mounts: tuple[StepMount, ...] = ()
    hostname: str = "buildkitsandbox"
    etc_hosts: str = ""
    etc_resolv_conf: str = ""
    idmap_size: int
    setgroups: bool
    status_fd: int = 3
    relaxed: tuple[str, ...] = ()

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["rootfs"] = {k: getattr(self.rootfs, k) for k in RootFs.__dataclass_fields__}
        d["mounts"] = [{k: getattr(m, k) for k in StepMount.__dataclass_fields__} for m in self.mounts]
        return json.dumps(d)

    @classmethod
    def from_json(cls, text: str | bytes) -> "StepSpec":
        try:
            d = _dict(json.loads(text), "step spec")
        except json.JSONDecodeError as e:
            raise SpecError(f"step spec: {e}") from None
        w = "step spec"
        if _int(d, "version", w) != SPEC_VERSION:
            raise SpecError(f"step spec version {d['version']}, this init reads {SPEC_VERSION}")
        mounts = _field(d, "mounts", list, w)
        assert isinstance(mounts, list)
        return cls(version=SPEC_VERSION, mountpoint=_str(d, "mountpoint", w),
                   rootfs=RootFs.from_dict(_dict(d.get("rootfs"), "rootfs")),
                   args=_strs(d, "args", w), env=_strs(d, "env", w), cwd=_str(d, "cwd", w),
                   user=_str(d, "user", w),
                   network=_choice(d, "network", _NETWORKS, w),
                   mounts=tuple(StepMount.from_dict(_dict(m, "mount")) for m in mounts),
                   hostname=_str(d, "hostname", w), etc_hosts=_str(d, "etc_hosts", w),
                   etc_resolv_conf=_str(d, "etc_resolv_conf", w), idmap_size=_int(d, "idmap_size", w),
                   setgroups=_bool(d, "setgroups", w), status_fd=_int(d, "status_fd", w),
                   relaxed=_relaxed(d, w))


@dataclass(frozen=True, slots=True, kw_only=True)
class StepReport:
    """Mount-point stubs the init created in the root (paths relative to it, in creation order)
    and the (atime, mtime) in ns the directories they were made in had before."""
    stubs: tuple[str, ...] = ()
    parents: tuple[tuple[str, int, int], ...] = ()

    def to_line(self) -> bytes:
        return (json.dumps({"stubs": list(self.stubs), "parents": [list(p) for p in self.parents]}) + "\n").encode()


@dataclass(frozen=True, slots=True, kw_only=True)
class SetupFailure:
    """The step could not be set up: `kind` "idmap" (ids the namespace cannot map), "user"
    (unknown user or group) or "setup" (anything else)."""
    kind: FailureKind
    message: str

    def to_line(self) -> bytes:
        return (json.dumps({"error": self.kind, "message": self.message}) + "\n").encode()


def _parent(v: object) -> tuple[str, int, int]:
    if (isinstance(v, list) and len(v) == 3 and isinstance(v[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in v[1:])):
        return (v[0], v[1], v[2])
    raise SpecError(f"status: bad parent entry {v!r}")


def parse_status_line(text: str | bytes) -> StatusLine:
    """One line of the status pipe."""
    try:
        d = _dict(json.loads(text), "status line")
    except json.JSONDecodeError as e:
        raise SpecError(f"status line: {e}") from None
    if "error" in d:
        kind = _choice(d, "error", _FAILURE_KINDS, "status")
        return SetupFailure(kind=kind, message=_str(d, "message", "status"))
    parents = _field(d, "parents", list, "status")
    assert isinstance(parents, list)
    return StepReport(stubs=_strs(d, "stubs", "status"), parents=tuple(_parent(p) for p in parents))
