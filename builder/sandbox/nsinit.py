"""Per-RUN init: runs inside the worker's user namespace, sets up one step and execs its command.

Started by the worker (`builder.sandbox.client.nsinit_argv`) with a JSON spec on stdin, the step's
output pipe on stdout/stderr and a status pipe on fd `spec["status_fd"]`. It imports only the standard library so
that it starts fast.

Process layout: this process unshares pid/mount/ipc/uts (and net for network=none) and forks;
the child is pid 1 of the step: it mounts the rootfs, /proc, /dev, /etc/hosts, resolv.conf and
the step's mounts, records the mount-point stubs it had to create (JSON on the status fd), pivots into the
rootfs and becomes the command (setgroups/setresgid/setresuid/chdir/execve), so the command is
pid 1 as under runc. Pid 1 dies with its parent (PR_SET_PDEATHSIG, set again after the
credentials change), and every process of the step dies with pid 1, so killing this process kills
the whole step. Exit status: the command's (128+signal
when killed); 125 after a setup error, whose description is on the status fd.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import signal
import struct
import sys

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
SETUP_FAILED = 125
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


class SetupError(Exception):
    """A step could not be set up; `kind` is "idmap", "user" or "setup"."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {fstype or ''} {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new: str, old: str) -> None:
    nr = _PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, "pivot_root: unknown architecture")
    _check(_libc.syscall(nr, new.encode(), old.encode()), "pivot_root")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


def bind(src: str, target: str, *, readonly: bool, recursive: bool = False) -> None:
    """Bind `src` on `target`. A read-only recursive bind makes every mount below read-only too
    (a plain remount only covers the top one: /sys/fs/cgroup would stay writable)."""
    mount(src, target, None, MS_BIND | (MS_REC if recursive else 0))
    if not readonly:
        return
    if recursive and _setattr_rdonly_recursive(target):
        return
    _remount_rdonly(target)
    if recursive:
        for mp in _submounts(target):
            _remount_rdonly(mp)


def _remount_rdonly(target: str) -> None:
    st = os.statvfs(target)
    keep = 0      # flags locked by the parent user namespace must be repeated on a remount
    for bit, ms in ((2, MS_NOSUID), (4, MS_NODEV), (8, MS_NOEXEC), (1024, MS_NOATIME),
                    (2048, MS_NODIRATIME), (4096, MS_RELATIME)):
        if st.f_flag & bit:
            keep |= ms
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | keep)


_SYS_MOUNT_SETATTR = 442          # the same number on every architecture (new syscall table)
_AT_FDCWD, _AT_RECURSIVE, _MOUNT_ATTR_RDONLY = -100, 0x8000, 0x1


def _setattr_rdonly_recursive(target: str) -> bool:
    """mount_setattr(2) (Linux >= 5.12): the whole tree read-only in one call."""
    attr = struct.pack("QQQQ", _MOUNT_ATTR_RDONLY, 0, 0, 0)
    buf = ctypes.create_string_buffer(attr, len(attr))
    rc = _libc.syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(_AT_FDCWD), target.encode(),
                       ctypes.c_long(_AT_RECURSIVE), buf, ctypes.c_size_t(len(attr)))
    return rc == 0


_OCTAL = re.compile(r"\\([0-7]{3})")     # mountinfo escapes space, tab, newline and backslash


def _submounts(target: str) -> list[str]:
    """Mount points strictly below `target`, parents first (from /proc/self/mountinfo)."""
    prefix = target.rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            mp = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if mp.startswith(prefix):
                out.append(mp)
    return sorted(set(out), key=len)


def overlay_options(lower: list[str], upper: str | None, work: str | None) -> str:
    opts = "lowerdir=" + ":".join(lower)
    if upper:
        opts += f",upperdir={upper},workdir={work}"
    return opts + ",userxattr"


# ------------------------------------------------------------------ paths inside the rootfs

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

    def report(self) -> dict:
        return {"stubs": self.created, "parents": [[k, a, m] for k, (a, m) in self.parents.items()]}


def resolve(root: str, path: str, *, create: str | None, stubs: Stubs | None) -> str:
    """Host path of `path` inside `root`, symlinks resolved as if `root` were `/` (never leaving
    it). Missing components are created (dirs; the last one a file when create == "file") and
    recorded in `stubs`; with create=None a missing component raises FileNotFoundError."""
    todo = [c for c in path.split("/") if c not in ("", ".")]
    todo.reverse()
    cur: list[str] = []
    links = 0
    while todo:
        comp = todo.pop()
        if comp == "..":
            if cur:
                cur.pop()
            continue
        rel = "/".join(cur + [comp])
        full = os.path.join(root, rel)
        try:
            st = os.lstat(full)
        except FileNotFoundError:
            if create is None:
                raise
            if stubs is not None:
                stubs.note_parent("/".join(cur))
            if not todo and create == "file":
                os.close(os.open(full, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
            else:
                os.mkdir(full, 0o755)
            if stubs is not None:
                stubs.created.append(rel)
            cur.append(comp)
            continue
        if (st.st_mode & 0o170000) == 0o120000:
            links += 1
            if links > 40:
                raise OSError(errno.ELOOP, f"too many symlinks in {path}")
            target = os.readlink(full)
            if target.startswith("/"):
                cur = []
            todo.extend(reversed([c for c in target.split("/") if c not in ("", ".")]))
            continue
        cur.append(comp)
    return os.path.join(root, "/".join(cur)) if cur else root


# ------------------------------------------------------------------ users

def _read_db(path: str) -> list[list[str]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return [ln.rstrip("\n").split(":") for ln in f if ln.strip() and not ln.startswith("#")]
    except OSError:
        return []


def resolve_user(spec: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary gids, home) for a USER spec, read from /etc/passwd and /etc/group
    of the current root (runc semantics: uid:gid numeric → no group lookup; groups of the user only
    when no group is given; the primary gid is not repeated; home "/" for a user not in passwd)."""
    user, _, group = (spec or "0").partition(":")
    passwd = [p for p in _read_db("/etc/passwd") if len(p) >= 4]
    match = next((p for p in passwd if p[0] == user), None)
    if match is None and user.isdigit():
        match = next((p for p in passwd if p[2] == user), None)
    home = match[5] if match is not None and len(match) >= 6 and match[5] else "/"
    if user.isdigit() and group.isdigit():
        return int(user), int(group), [], home
    if match is None:
        if not user.isdigit():
            raise SetupError("user", f"unable to find user {user}: no matching entries in passwd file")
        uid, gid, name = int(user), 0, None
    else:
        uid, gid, name = int(match[2]), int(match[3]), match[0]
    groups = [g for g in _read_db("/etc/group") if len(g) >= 3]
    if group:
        g = next((g for g in groups if g[0] == group), None)
        if g is not None:
            return uid, int(g[2]), [], home
        if group.isdigit():
            return uid, int(group), [], home
        raise SetupError("user", f"unable to find group {group}: no matching entries in group file")
    sgids: list[int] = []
    if name is not None:
        for g in groups:
            members = g[3].split(",") if len(g) >= 4 else []
            if name in members and g[2].isdigit() and int(g[2]) != gid and int(g[2]) not in sgids:
                sgids.append(int(g[2]))
    return uid, gid, sgids, home


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


# ------------------------------------------------------------------ setup

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


def _user_mount(root: str, m: dict, stubs: Stubs) -> None:
    kind = m["kind"]
    target = resolve(root, m["target"], create="file" if m.get("file") else "dir", stubs=stubs)
    if kind == "bind":
        bind(m["src"], target, readonly=m.get("readonly", True), recursive=True)
    elif kind == "overlay":
        flags = MS_RDONLY if not m.get("upper") else 0
        mount("overlay", target, "overlay", flags, overlay_options(m["lower"], m.get("upper"), m.get("work")))
    elif kind == "tmpfs":
        size = int(m.get("size") or 0)
        mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755" + (f",size={size}" if size else ""))
    else:
        raise SetupError("setup", f"unknown mount kind {kind}")


def setup_root(spec: dict) -> Stubs:
    """Mount the rootfs and everything on it (still in the worker's view of the filesystem)."""
    root = spec["mountpoint"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    rf = spec["rootfs"]
    if rf["type"] == "overlay":
        mount("overlay", root, "overlay", 0, overlay_options(rf["lower"], rf["upper"], rf["work"]))
    else:
        bind(rf["path"], root, readonly=False)
    stubs = Stubs(root)
    proc = resolve(root, "/proc", create="dir", stubs=stubs)
    mount("proc", proc, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount_dev(resolve(root, "/dev", create="dir", stubs=stubs))
    _mount_sys(resolve(root, "/sys", create="dir", stubs=stubs), spec.get("network") == "none")
    for name in ("hosts", "resolv.conf"):
        src = spec.get(f"etc_{name}")
        if src:
            try:
                bind(src, resolve(root, f"/etc/{name}", create="file", stubs=stubs), readonly=True)
            except OSError:
                pass
    for m in spec.get("mounts", ()):
        _user_mount(root, m, stubs)
    return stubs


def enter_root(root: str) -> None:
    os.chdir(root)
    pivot_root(".", ".")
    umount(".", MNT_DETACH)
    os.chdir("/")


def exec_command(spec: dict, idmap_size: int, setgroups_ok: bool) -> None:
    """Become the step's command, as pid 1 of its namespace (as runc does: `$$` is 1 and
    /proc/1/comm is the shell). Returns only by raising SetupError; an exec failure exits 127/126
    with a message on stderr, like a shell would."""
    uid, gid, sgids, home = resolve_user(spec.get("user", ""))
    bad = sorted({i for i in (uid, gid, *sgids) if not 0 <= i < idmap_size})
    if bad or (sgids and not setgroups_ok):
        raise SetupError("idmap", f"user {spec.get('user') or 'root'!r} needs id(s) "
                         f"{', '.join(map(str, bad or sgids))}")
    cwd = spec.get("cwd") or "/"
    os.umask(0o022)
    os.makedirs(cwd, 0o755, exist_ok=True)
    env = dict(e.split("=", 1) if "=" in e else (e, "") for e in spec["env"])
    env.setdefault("HOME", home)       # as runc/BuildKit: from passwd when the image has none
    try:
        devnull = os.open("/dev/null", os.O_RDONLY)
        os.dup2(devnull, 0)
        os.closerange(3, 65536)        # the status fd too: EOF there tells the worker we got here
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        if setgroups_ok:
            os.setgroups(sgids)
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        set_pdeathsig()                # changing credentials cleared it; the step must die with us
        os.chdir(cwd)
        exe = find_executable(spec["args"][0], env.get("PATH", ""))
        if exe is None:
            raise FileNotFoundError(errno.ENOENT, "executable file not found in $PATH")
        os.execve(exe, spec["args"], env)
    except OSError as e:
        os.write(2, f"pybuild: exec {spec['args'][0]}: {e.strerror}\n".encode())
        os._exit(127 if e.errno == errno.ENOENT else 126)


def pid1(spec: dict, status_fd: int) -> int:
    set_pdeathsig()
    try:
        stubs = setup_root(spec)
        os.write(status_fd, (json.dumps(stubs.report()) + "\n").encode())
        if spec.get("network") == "none":
            _lo_up()
        name = spec.get("hostname", "buildkitsandbox").encode()
        _libc.sethostname(name, len(name))
        enter_root(spec["mountpoint"])
        exec_command(spec, int(spec["idmap_size"]), bool(spec["setgroups"]))
    except SetupError as e:
        os.write(status_fd, (json.dumps({"error": e.kind, "message": str(e)}) + "\n").encode())
    except OSError as e:
        os.write(status_fd, (json.dumps({"error": "setup", "message": str(e)}) + "\n").encode())
    return SETUP_FAILED


def main() -> None:
    spec = json.loads(sys.stdin.buffer.read())
    status_fd = int(spec.get("status_fd", 3))
    flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS
    if spec.get("network") == "none":
        flags |= CLONE_NEWNET
    set_pdeathsig()
    try:
        unshare(flags)
    except OSError as e:
        os.write(status_fd, (json.dumps({"error": "setup", "message": str(e)}) + "\n").encode())
        os._exit(SETUP_FAILED)
    pid = os.fork()
    if pid == 0:
        code = SETUP_FAILED
        try:
            code = pid1(spec, status_fd)
        finally:
            os._exit(code)
    os.close(status_fd)
    _, st = os.waitpid(pid, 0)
    os._exit(os.waitstatus_to_exitcode(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))


if __name__ == "__main__":
    main()
