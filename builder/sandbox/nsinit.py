"""Per-RUN init: runs inside the worker's user namespace, sets up one step and execs its command.

Started by the worker (`builder.sandbox.client.nsinit_argv`: `python -S -E` with the package
parent on sys.path) with a `StepSpec` as JSON on stdin, the step's output pipe on stdout/stderr
and a status pipe on fd `spec.status_fd`. It imports only the standard library and the
stdlib-only modules `builder.sandbox.{spec,linux,users}` and `builder.layer.inroot`, so that it
starts fast; everything is imported before pivot_root (no lazy import works after it).

Protections (each one the kernel refuses fails the step, unless waived in `spec.relaxed`):
/proc and /sys masked and read-only as in runc's default spec; the command holds only BuildKit's
default RUN capabilities (bounding, permitted, effective; inheritable and ambient empty), runs
with no_new_privs and under a seccomp filter refusing what Docker's default profile refuses
(`builder.sandbox.linux.SeccompFilter`).

Process layout: this process unshares pid/mount/ipc/uts (and net for network "none" and
"private": for "private" the worker then starts slirp4netns on this process's netns, and pid 1
waits for tap0's default route before the exec) and forks;
the child is pid 1 of the step: it mounts the rootfs, /proc, /dev, /etc/hosts, resolv.conf and
the step's mounts, reports the mount-point stubs it had to create (`StepReport` on the status
fd), pivots into the rootfs and becomes the command (setgroups/setresgid/setresuid/chdir/execve),
so the command is pid 1 as under runc. Pid 1 dies with its parent (PR_SET_PDEATHSIG, set again
after the credentials change), and every process of the step dies with pid 1, so killing this
process kills the whole step. Exit status: the command's (128+signal when killed); 125 after a
setup error, described by a `SetupFailure` on the status fd.
"""
from __future__ import annotations

import errno
import os
import signal
import stat
import struct
import sys
import time

from builder.layer import inroot
from builder.sandbox.linux import (CLONE_NEWIPC, CLONE_NEWNET, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUTS,
                                   DEFAULT_RUN_CAPS, MNT_DETACH, MS_NODEV, MS_NOEXEC, MS_NOSUID,
                                   MS_PRIVATE, MS_RDONLY, MS_REC, SeccompFilter, bind, cap_mask,
                                   limit_caps, mount, overlay_options, pivot_root, set_no_new_privs,
                                   set_pdeathsig, sethostname, umount, unshare)
from builder.sandbox.spec import SetupFailure, SpecError, StepMount, StepReport, StepSpec
from builder.sandbox.users import UnknownUser, read_group, read_passwd, resolve_user

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, TypeVar
    from builder.sandbox.spec import FailureKind
    R = TypeVar("R")

SETUP_FAILED = 125
# runc's default spec: masked (files: /dev/null bound over them; directories: an empty read-only
# tmpfs) and read-only paths of /proc and /sys, relative to their mount points.
MASKED_PROC = ("acpi", "asound", "interrupts", "kcore", "keys", "latency_stats", "timer_list",
               "timer_stats", "sched_debug", "scsi")
READONLY_PROC = ("bus", "fs", "irq", "sys", "sysrq-trigger")
MASKED_SYS = ("firmware", "devices/virtual/powercap")


class SetupError(Exception):
    """A step could not be set up; `kind` is "idmap", "user" or "setup"."""

    def __init__(self, kind: FailureKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class Stubs:
    """Mount-point stubs created in the rootfs, and the original times of the dirs they went in."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.created: list[str] = []
        self.parents: dict[str, tuple[int, int]] = {}

    def note_parent(self, rel: str) -> None:
        if rel in self.parents or rel in self.created:
            return
        st = os.lstat(os.path.join(self.root, rel) if rel else self.root)
        self.parents[rel] = (st.st_atime_ns, st.st_mtime_ns)

    def report(self) -> StepReport:
        return StepReport(stubs=tuple(self.created),
                          parents=tuple((k, a, m) for k, (a, m) in self.parents.items()))

    def target(self, path: str, *, file: bool) -> str:
        """Host path of the mount target `path` inside the root, creating (and recording) the
        missing components: directories, the last one a file when `file`."""
        def create(rel: str, last: bool) -> None:
            self.note_parent(os.path.dirname(rel))
            full = os.path.join(self.root, rel)
            if last and file:
                os.close(os.open(full, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(full, 0o755)
            self.created.append(rel)
        return inroot.resolve(self.root, path, missing=create)


def find_executable(name: str, path: str) -> str | None:
    """execvp's PATH search, done by hand: os.execvpe imports modules lazily, which fails after
    pivot_root in this -S interpreter."""
    if "/" in name:
        return name
    for d in (path or "").split(":"):
        cand = os.path.join(d or ".", name)
        if os.path.isfile(cand) and os.access(cand, os.X_OK):
            return cand
    return None


def _mount_dev(dev: str) -> None:
    mount("tmpfs", dev, "tmpfs", MS_NOSUID, "mode=755,size=65536k")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        p = os.path.join(dev, name)
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o666))
        try:
            bind(f"/dev/{name}", p, readonly=False)
        except OSError:
            os.unlink(p)
    for d in ("pts", "shm", "mqueue"):
        os.mkdir(os.path.join(dev, d), 0o755)
    try:
        mount("devpts", os.path.join(dev, "pts"), "devpts", MS_NOSUID | MS_NOEXEC,
              "newinstance,ptmxmode=0666,mode=0620")
        os.symlink("pts/ptmx", os.path.join(dev, "ptmx"))
    except OSError:
        pass
    mount("shm", os.path.join(dev, "shm"), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=1777,size=65536k")
    try:    # runc's default mounts include the step's own POSIX message queues
        mount("mqueue", os.path.join(dev, "mqueue"), "mqueue", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    except OSError:
        os.rmdir(os.path.join(dev, "mqueue"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, os.path.join(dev, name))


def _protect(name: str, spec: StepSpec, fn: Callable[[], R]) -> R | None:
    """Apply protection `name` (one of spec.PROTECTIONS); when the kernel or the environment
    refuses it the step fails naming it, unless the user waived it (then None)."""
    try:
        return fn()
    except OSError as e:
        if name in spec.relaxed:
            return None
        raise SetupError("setup", f"{name}: {e} (this protection is required for RUN steps)") from None


def _mask_proc_sys(proc: str, sys_dir: str) -> None:
    """Mask and make read-only what runc's default spec does, in the fresh /proc and /sys at
    the host paths `proc` and `sys_dir` (kernel-made trees: no step-made symlink is there)."""
    def mask(path: str) -> None:
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISDIR(st.st_mode):
            mount("tmpfs", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=555")
        elif not stat.S_ISLNK(st.st_mode):
            bind("/dev/null", path, readonly=True)
    for rel in MASKED_PROC:
        mask(os.path.join(proc, rel))
    for rel in MASKED_SYS:
        mask(os.path.join(sys_dir, rel))
    for rel in READONLY_PROC:
        path = os.path.join(proc, rel)
        if os.path.lexists(path) and not os.path.islink(path):
            bind(path, path, readonly=True, recursive=True)


def _mount_sys(target: str, own_net: bool) -> None:
    try:
        if own_net:
            mount("sysfs", target, "sysfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            bind("/sys", target, readonly=True, recursive=True)
    except OSError:
        pass


def _lo_up() -> None:
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        import fcntl
        req = struct.pack("16sh14x", b"lo", 0)
        flags = struct.unpack("16sh14x", fcntl.ioctl(s.fileno(), 0x8913, req))[1]
        fcntl.ioctl(s.fileno(), 0x8914, struct.pack("16sh14x", b"lo", flags | 1))
    finally:
        s.close()


def _wait_tap(timeout: float = 10.0) -> None:
    """Wait until the worker's user-mode stack configured tap0 (its default route is there)."""
    deadline = time.monotonic() + timeout
    while True:
        with open("/proc/net/route", "rb") as f:
            if any(ln.split()[:2] == [b"tap0", b"00000000"] for ln in f.read().splitlines()):
                return
        if time.monotonic() > deadline:
            raise SetupError("setup", "network: the user-mode network stack (slirp4netns) did not "
                             "configure tap0; see `pybuild doctor`")
        time.sleep(0.001)


def _user_mount(m: StepMount, stubs: Stubs) -> None:
    target = stubs.target(m.target, file=m.file)
    if m.kind == "bind":
        bind(m.src, target, readonly=m.readonly, recursive=True)
    elif m.kind == "overlay":
        flags = MS_RDONLY if not m.upper else 0
        mount("overlay", target, "overlay", flags, overlay_options(list(m.lower), m.upper or None, m.work or None))
    elif m.kind == "tmpfs":
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755" + (f",size={m.size}" if m.size else ""))
    else:
        raise SetupError("setup", f"unknown mount kind {m.kind}")


def setup_root(spec: StepSpec) -> Stubs:
    """Mount the rootfs and everything on it (still in the worker's view of the filesystem)."""
    root = spec.mountpoint
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    rf = spec.rootfs
    if rf.type == "overlay":
        mount("overlay", root, "overlay", 0, overlay_options(list(rf.lower), rf.upper, rf.work))
    else:
        bind(rf.path, root, readonly=False)
    stubs = Stubs(root)
    proc = stubs.target("/proc", file=False)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount_dev(stubs.target("/dev", file=False))
    sys_dir = stubs.target("/sys", file=False)
    _mount_sys(sys_dir, spec.network in ("none", "private"))
    _protect("masked-paths", spec, lambda: _mask_proc_sys(proc, sys_dir))
    for name, src in (("hosts", spec.etc_hosts), ("resolv.conf", spec.etc_resolv_conf)):
        if src:
            try:
                bind(src, stubs.target(f"/etc/{name}", file=True), readonly=True)
            except OSError:
                pass
    for m in spec.mounts:
        _user_mount(m, stubs)
    return stubs


def enter_root(root: str) -> None:
    os.chdir(root)
    pivot_root(".", ".")
    umount(".", MNT_DETACH)
    os.chdir("/")


def exec_command(spec: StepSpec, seccomp: SeccompFilter | None) -> None:
    """Become the step's command, as pid 1 of its namespace (as runc does: `$$` is 1 and
    /proc/1/comm is the shell), holding only `DEFAULT_RUN_CAPS` (none after a change to a non-root
    USER), with no_new_privs and the `seccomp` filter. Returns only by raising SetupError; an exec
    failure exits 127/126 with a message on stderr, like a shell would."""
    try:
        ids = resolve_user(spec.user, read_passwd("/etc/passwd"), read_group("/etc/group"))
    except UnknownUser as e:
        raise SetupError("user", str(e)) from None
    bad = sorted({i for i in (ids.uid, ids.gid, *ids.groups) if not 0 <= i < spec.idmap_size})
    extra = [g for g in ids.groups if g != ids.gid]       # the primary gid needs no setgroups
    if bad or (extra and not spec.setgroups):
        raise SetupError("idmap", f"user {spec.user or 'root'!r} needs id(s) "
                         f"{', '.join(map(str, bad or extra))}")
    cwd = spec.cwd or "/"
    os.umask(0o022)
    os.makedirs(cwd, 0o755, exist_ok=True)
    env = {k: v for k, _, v in (e.partition("=") for e in spec.env)}
    env.setdefault("HOME", ids.home)       # as runc/BuildKit: from passwd when the image has none
    _protect("capabilities", spec, lambda: limit_caps(cap_mask(DEFAULT_RUN_CAPS)))
    _protect("no-new-privs", spec, set_no_new_privs)
    if seccomp is not None:                # last: nothing below makes a call the filter refuses
        _protect("seccomp", spec, seccomp.load)
    try:
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, 65536)        # the status fd too: EOF there tells the worker we got here
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if spec.setgroups:
            os.setgroups(list(ids.groups))
        os.setresgid(ids.gid, ids.gid, ids.gid)
        os.setresuid(ids.uid, ids.uid, ids.uid)
        set_pdeathsig()                # changing credentials cleared it; the step must die with us
        os.chdir(cwd)
        exe = find_executable(spec.args[0], env.get("PATH", ""))
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, "executable file not found in $PATH")
        os.execve(exe, list(spec.args), env)
    except OSError as e:
        os.write(2, f"pybuild: exec {spec.args[0]}: {e.strerror}\n".encode())
        os._exit(127 if e.errno == errno.ENOENT else 126)


def pid1(spec: StepSpec) -> int:
    set_pdeathsig()
    status_fd = spec.status_fd
    try:
        stubs = setup_root(spec)
        seccomp = _protect("seccomp", spec, SeccompFilter)    # built while the host's libraries are reachable
        os.write(status_fd, stubs.report().to_line())
        if spec.network == "none":
            _lo_up()
        sethostname(spec.hostname)
        enter_root(spec.mountpoint)
        if spec.network == "private":
            _wait_tap()
        exec_command(spec, seccomp)
    except SetupError as e:
        os.write(status_fd, SetupFailure(kind=e.kind, message=str(e)).to_line())
    except OSError as e:
        os.write(status_fd, SetupFailure(kind="setup", message=str(e)).to_line())
    return SETUP_FAILED


def main() -> None:
    raw = sys.stdin.buffer.read()
    try:
        spec = StepSpec.from_json(raw)
    except SpecError as e:
        sys.stderr.write(f"pybuild init: {e}\n")
        os._exit(SETUP_FAILED)
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if spec.network in ("none", "private"):
        flags |= CLONE_NEWNET
    set_pdeathsig()
    try:
        unshare(flags)
    except OSError as e:
        os.write(spec.status_fd, SetupFailure(kind="setup", message=str(e)).to_line())
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        code = SETUP_FAILED
        try:
            code = pid1(spec)
        finally:
            os._exit(code)
    os.close(spec.status_fd)
    _, st = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))


if __name__ == "__main__":
    main()
