"""Linux mount, namespace, capability and seccomp system calls through ctypes (standard library
only: the step init `builder.sandbox.nsinit` and the worker both use them). Failures raise OSError
with the errno.

Capabilities (`DEFAULT_RUN_CAPS`, `limit_caps`) and the seccomp filter (`SeccompFilter`) are what
a RUN step keeps of its namespace's privilege; see `limit_caps` and `SeccompFilter` for the rules.
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


# ---------------------------------------------------------------------- capabilities

CAPS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "DAC_READ_SEARCH": 2, "FOWNER": 3, "FSETID": 4, "KILL": 5,
        "SETGID": 6, "SETUID": 7, "SETPCAP": 8, "LINUX_IMMUTABLE": 9, "NET_BIND_SERVICE": 10,
        "NET_BROADCAST": 11, "NET_ADMIN": 12, "NET_RAW": 13, "IPC_LOCK": 14, "IPC_OWNER": 15,
        "SYS_MODULE": 16, "SYS_RAWIO": 17, "SYS_CHROOT": 18, "SYS_PTRACE": 19, "SYS_PACCT": 20,
        "SYS_ADMIN": 21, "SYS_BOOT": 22, "SYS_NICE": 23, "SYS_RESOURCE": 24, "SYS_TIME": 25,
        "SYS_TTY_CONFIG": 26, "MKNOD": 27, "LEASE": 28, "AUDIT_WRITE": 29, "AUDIT_CONTROL": 30,
        "SETFCAP": 31, "MAC_OVERRIDE": 32, "MAC_ADMIN": 33, "SYSLOG": 34, "WAKE_ALARM": 35,
        "BLOCK_SUSPEND": 36, "AUDIT_READ": 37, "PERFMON": 38, "BPF": 39, "CHECKPOINT_RESTORE": 40}
# BuildKit's (and Docker's) default set for a RUN step: CapBnd/CapEff 00000000a80425fb.
DEFAULT_RUN_CAPS = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID", "SETPCAP",
                    "NET_BIND_SERVICE", "NET_RAW", "SYS_CHROOT", "MKNOD", "AUDIT_WRITE", "SETFCAP")
PR_CAPBSET_READ, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS, PR_GET_NO_NEW_PRIVS = 23, 24, 38, 39
PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_CAP_VERSION_3 = 0x20080522


def cap_mask(names: tuple[str, ...]) -> int:
    m = 0
    for n in names:
        m |= 1 << CAPS[n]
    return m


def _prctl(option: int, arg: int = 0, what: str = "prctl") -> int:
    lib = _lib()
    rc = lib.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), ctypes.c_ulong(0), ctypes.c_ulong(0),
                   ctypes.c_ulong(0))
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return int(rc)


def limit_caps(keep: int) -> None:
    """Limit this process to the capabilities in the mask `keep`: every other one leaves the
    bounding set (PR_CAPBSET_DROP, so no later exec or setuid can get it back), permitted and
    effective become `keep`, inheritable and ambient become empty (an empty inheritable set: a
    file's inheritable capabilities then give nothing, as after runc/moby's fix of CVE-2022-24769).
    Needs CAP_SETPCAP; a later setresuid to a non-root id clears permitted and effective as usual.
    Raises OSError when the kernel refuses or a dropped capability is still there."""
    last = 64
    for cap in range(64):
        if keep & (1 << cap):
            continue
        try:
            _prctl(PR_CAPBSET_DROP, cap, f"drop capability {cap} from the bounding set")
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            last = cap                  # past the kernel's last capability
            break
    header = struct.pack("Ii", _CAP_VERSION_3, 0)
    lo, hi = keep & 0xFFFFFFFF, keep >> 32
    data = struct.pack("6I", lo, lo, 0, hi, hi, 0)     # effective, permitted, inheritable × 2
    hbuf, dbuf = ctypes.create_string_buffer(header, len(header)), ctypes.create_string_buffer(data, len(data))
    _check(_lib().capset(hbuf, dbuf), "capset")
    _prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, "clear the ambient capabilities")
    if any(_prctl(PR_CAPBSET_READ, c) for c in range(last) if not keep & (1 << c)):
        raise OSError(errno.EPERM, "a dropped capability is still in the bounding set")


def set_no_new_privs() -> None:
    """PR_SET_NO_NEW_PRIVS: no exec (setuid binary, file capabilities) can raise privilege again."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1, "no_new_privs")
    if _prctl(PR_GET_NO_NEW_PRIVS) != 1:
        raise OSError(errno.EPERM, "no_new_privs did not stay set")


# ---------------------------------------------------------------------- seccomp

# What Docker's default profile refuses a container without extra capabilities (EPERM): the
# kernel keyring, modules, kexec, handles that bypass the mount tree, bpf, perf, userfaultfd,
# io_uring, every mount API, clock and swap changes, accounting, quotas, raw port I/O, NUMA
# policy, reboot and obsolete calls. unshare/clone with a namespace flag and setns are refused
# too (no new user namespace to regain capabilities in); clone3 gets ENOSYS (its flags are in
# memory a filter cannot read), so the C library falls back to clone, which is checked.
SECCOMP_DENIED = (
    "add_key", "keyctl", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "open_by_handle_at", "name_to_handle_at", "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "setns", "mount", "umount", "umount2",
    "pivot_root", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
    "reboot", "swapon", "swapoff", "acct", "settimeofday", "stime", "clock_settime", "clock_adjtime",
    "iopl", "ioperm", "quotactl", "quotactl_fd", "lookup_dcookie", "nfsservctl", "uselib", "vhangup",
    "_sysctl", "sysfs", "ustat", "syslog", "kcmp", "move_pages",
    "migrate_pages", "get_kernel_syms", "query_module", "create_module", "vm86", "vm86old",
    "fanotify_init", "pciconfig_read", "pciconfig_write", "pciconfig_iobase")
NS_FLAGS = (CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET,
            0x02000000, 0x00000080)       # + CLONE_NEWCGROUP, CLONE_NEWTIME
_SCMP_ACT_ALLOW, _SCMP_ACT_ERRNO = 0x7FFF0000, 0x00050000
_SCMP_CMP_MASKED_EQ = 7
_SCMP_FLTATR_CTL_NNP = 3
_EXTRA_ARCHES = {"x86_64": (b"x86", b"x32"), "aarch64": (b"arm",)}


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


class SeccompFilter:
    """Docker's default refusals as a seccomp filter, built with libseccomp (`libseccomp.so.2`,
    loaded through ctypes: it checks the architecture and knows every architecture's syscall
    numbers, which a hand-written BPF program would have to carry). Everything not refused is
    allowed. Build it while the host's libraries are reachable (before pivot_root); `load` it
    last, just before exec (it sets no_new_privs too). Raises OSError with what failed."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
        except OSError as e:
            raise OSError(errno.ENOENT, f"cannot load libseccomp.so.2 (Debian package libseccomp2): {e}") from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                               ctypes.POINTER(_ArgCmp)]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
        lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
        if not self._ctx:
            raise OSError(errno.ENOMEM, "seccomp_init failed")
        for arch in _EXTRA_ARCHES.get(os.uname().machine, ()):
            token = lib.seccomp_arch_resolve_name(arch)
            if token:                       # 32-bit calls are filtered too (else: killed)
                lib.seccomp_arch_add(self._ctx, token)
        self._rules()

    def _add(self, name: str, action: int, *cmp: _ArgCmp) -> None:
        nr = self._lib.seccomp_syscall_resolve_name(name.encode())
        if nr == -1:
            return                          # unknown to this libseccomp: not on any architecture
        arr = (_ArgCmp * max(1, len(cmp)))(*cmp)
        rc = self._lib.seccomp_rule_add_array(self._ctx, action, nr, len(cmp), arr)
        if rc < 0 and nr >= 0:              # (a negative nr: a call this architecture lacks)
            raise OSError(-rc, f"seccomp rule for {name}: {os.strerror(-rc)}")

    def _rules(self) -> None:
        eperm = _SCMP_ACT_ERRNO | errno.EPERM
        for name in SECCOMP_DENIED:
            self._add(name, eperm)
        self._add("clone3", _SCMP_ACT_ERRNO | errno.ENOSYS)
        clone_flags_arg = 1 if os.uname().machine == "s390x" else 0
        for flag in NS_FLAGS:
            self._add("unshare", eperm, _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
            self._add("clone", eperm, _ArgCmp(clone_flags_arg, _SCMP_CMP_MASKED_EQ, flag, flag))

    def load(self) -> None:
        """Install the filter on this thread (irreversible); frees it."""
        self._lib.seccomp_attr_set(self._ctx, _SCMP_FLTATR_CTL_NNP, 1)
        rc = self._lib.seccomp_load(self._ctx)
        self._lib.seccomp_release(self._ctx)
        self._ctx = None
        if rc < 0:
            raise OSError(-rc, f"seccomp_load: {os.strerror(-rc)}")
