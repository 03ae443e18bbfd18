"""Linux mount and namespace system calls through ctypes (standard library only: the step init
`builder.sandbox.nsinit` and the worker both use them). Failures raise OSError with the errno.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import re
import signal
import struct

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}



@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    """The C library, loaded on first use (not at import)."""
    lib = ctypes.CDLL(None, use_errno=True)
    lib.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    lib.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return lib


def _check(ret: int, what: str) -> None:
    if ret != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    _check(_lib().unshare(flags), "unshare")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if s is not None else None)
    _check(_lib().mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {fstype or ''} {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(_lib().umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new: str, old: str) -> None:
    nr = _PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(errno.ENOSYS, "pivot_root: unknown architecture")
    _check(_lib().syscall(nr, new.encode(), old.encode()), "pivot_root")


def set_pdeathsig(sig: int = signal.SIGKILL) -> None:
    _lib().prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)


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
    rc = _lib().syscall(ctypes.c_long(_SYS_MOUNT_SETATTR), ctypes.c_long(_AT_FDCWD), target.encode(),
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


def sethostname(name: str) -> None:
    """Best effort (the step runs in its own uts namespace, where it cannot fail)."""
    b = name.encode()
    _lib().sethostname(b, len(b))
