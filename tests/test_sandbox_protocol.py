"""The sandbox's typed wires: worker messages (versioned, validated on receipt, errors rebuilt as
the same PybuildError with the same fields), the step spec nsinit reads, the shared in-root
resolver and the passwd/group reader."""
from __future__ import annotations

import dataclasses
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builder import errors
from builder.errors import (DigestMismatchError, DockerfileError, ExecError, IdMappingError, RegistryError,
                            SandboxError, SourceError)
from builder.image.digest import Digest
from builder.image.oci import Compression, Descriptor, MediaType
from builder.image.view import HostDir, LayerRef
from builder.layer import inroot
from builder.layer.tar import resolve_in_root
from builder.sandbox import protocol
from builder.sandbox.protocol import (Chunk, Config, Done, Failure, LayerResult, ProtocolError, Ready, RunExec,
                                      RunFile, WireError)
from builder.sandbox.spec import (SetupFailure, SpecError, StepMount, StepReport, StepSpec, RootFs,
                                  parse_status_line)
from builder.sandbox.users import read_group, read_passwd, resolve_owner, resolve_user, UnknownUser
from builder.solve.ops import ExecOp, FileOp, Mkdir

REPO = Path(__file__).resolve().parent.parent


def roundtrip(msg: object, expected: tuple[type, ...] = protocol.WORKER_MESSAGES) -> object:
    buf = io.BytesIO()
    protocol.write_message(buf, msg)  # type: ignore[arg-type]
    buf.seek(0)
    return protocol.read_message(buf, expected)


def failure_of(e: BaseException) -> errors.PybuildError:
    got = roundtrip(Failure(id=7, error=WireError.of(e)))
    assert isinstance(got, Failure) and got.id == 7
    return got.error.rebuild()


# ---------------------------------------------------------------------- errors across the wire

@pytest.mark.parametrize("err", [
    DigestMismatchError("sha256:" + "a" * 64, "sha256:" + "b" * 64, "layer diff_id"),
    ExecError("process \"false\" did not complete successfully: exit code: 3", exit_code=3, output_tail="boom\nbang"),
    IdMappingError("user 'app' needs id(s) 1000"),
    RegistryError("denied", status=403, codes=("DENIED", "UNAUTHORIZED")),
    SourceError("missing.txt: not found", location="Dockerfile:4"),
    DockerfileError("unknown instruction", filename="Containerfile", line=9),
    errors.BuildCancelled("build cancelled"),
])
def test_typed_errors_cross_the_wire(err: errors.PybuildError) -> None:
    got = failure_of(err)
    assert type(got) is type(err)
    assert got.fields() == err.fields()
    assert got.message == err.message and got.location == err.location
    assert str(got) == str(err)


def test_digest_mismatch_keeps_expected_and_actual() -> None:
    got = failure_of(DigestMismatchError("sha256:" + "1" * 64, "sha256:" + "2" * 64, "blob"))
    assert isinstance(got, DigestMismatchError)
    assert (got.expected, got.actual, got.what) == ("sha256:" + "1" * 64, "sha256:" + "2" * 64, "blob")


def test_exec_error_keeps_exit_code_and_tail() -> None:
    got = failure_of(ExecError("failed", exit_code=42, output_tail="last line"))
    assert isinstance(got, ExecError) and got.exit_code == 42 and got.output_tail == "last line"


def test_other_exceptions_arrive_as_sandbox_error() -> None:
    got = failure_of(KeyError("x"))
    assert type(got) is SandboxError and "KeyError" in got.message


def test_protocol_error_is_a_sandbox_error_and_rebuilds() -> None:
    got = failure_of(ProtocolError("bad frame"))
    assert isinstance(got, ProtocolError) and isinstance(got, SandboxError)


# ---------------------------------------------------------------------- messages

LAYER = LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer(Compression.GZIP),
                                       digest=Digest.of_bytes(b"x"), size=1), diff_id=Digest.of_bytes(b"y"))


def test_requests_and_replies_round_trip() -> None:
    req = RunExec(id=3, base=(LAYER,), op=ExecOp(args=("true",), env=()), mount_sources={1: HostDir(path=Path("/x"))},
                  secrets={"s": b"v"}, stream=True)
    assert roundtrip(req, protocol.REQUESTS) == req
    for msg in (Ready(snapshotter="overlay"), Chunk(id=3, data=b"out"), LayerResult(id=3, layer=LAYER),
                LayerResult(id=3, layer=None), Done(id=4)):
        assert roundtrip(msg) == msg


def test_version_mismatch_is_a_clear_sandbox_error() -> None:
    with pytest.raises(SandboxError, match="version mismatch.*version 99.*version 1"):
        roundtrip(LayerResult(version=99, id=1, layer=None))


def test_unexpected_message_type_is_refused() -> None:
    cfg = Config(root="/r", store_root="/s", snapshotter="auto", compression=Compression.GZIP, source_date_epoch=None,
                 idmap_size=1, setgroups=False, user="u", nsinit_argv=("python",))
    with pytest.raises(ProtocolError, match="unexpected sandbox message Config"):
        roundtrip(cfg)                                  # the parent never reads a Config
    assert roundtrip(cfg, (Config,)) == cfg


@pytest.mark.parametrize("bad", [
    LayerResult(id="1", layer=None),                    # type: ignore[arg-type]
    LayerResult(id=1, layer="sha256:abc"),              # type: ignore[arg-type]
    Chunk(id=1, data="text"),                           # type: ignore[arg-type]
    Done(id=True),
])
def test_mistyped_fields_are_refused(bad: object) -> None:
    with pytest.raises(ProtocolError):
        roundtrip(bad)


def test_mistyped_request_contents_are_refused() -> None:
    req = RunFile(id=1, base=("not a layer",), op=FileOp(actions=(Mkdir(path="/x"),)), sources={})  # type: ignore[arg-type]
    with pytest.raises(ProtocolError, match="chain"):
        roundtrip(req, protocol.REQUESTS)
    req2 = RunFile(id=1, base=(), op=FileOp(actions=()), sources={"1": HostDir(path=Path("/x"))})  # type: ignore[dict-item]
    with pytest.raises(ProtocolError, match="sources"):
        roundtrip(req2, protocol.REQUESTS)


def test_garbage_frame_is_a_protocol_error() -> None:
    buf = io.BytesIO(b"\x00\x00\x00\x03abc")
    with pytest.raises(ProtocolError):
        protocol.read_message(buf, protocol.WORKER_MESSAGES)
    assert protocol.read_message(io.BytesIO(b""), protocol.WORKER_MESSAGES) is None


# ---------------------------------------------------------------------- the step spec

SPEC = StepSpec(mountpoint="/w/r", rootfs=RootFs(type="overlay", lower=("/l2", "/l1"), upper="/u", work="/wk"),
                args=("/bin/sh", "-c", "echo hi"), env=("PATH=/bin", "A=b=c"), cwd="/app", user="app:staff",
                network="none", hostname="buildkitsandbox", etc_hosts="/w/hosts", etc_resolv_conf="/w/resolv.conf",
                mounts=(StepMount(kind="bind", src="/s", target="/run/secrets/x", readonly=True, file=True),
                        StepMount(kind="overlay", lower=("/a", "/e"), upper="/u1", work="/w1", target="/src"),
                        StepMount(kind="tmpfs", target="/tmp", size=1 << 20)),
                idmap_size=65536, setgroups=True, status_fd=5)


def test_step_spec_round_trips_through_json() -> None:
    assert StepSpec.from_json(SPEC.to_json()) == SPEC
    bind = dataclasses.replace(SPEC, rootfs=RootFs(type="bind", path="/snap/fs"))
    assert StepSpec.from_json(bind.to_json()) == bind


@pytest.mark.parametrize("change, match", [
    (lambda d: d.pop("args"), "missing 'args'"),
    (lambda d: d.update(idmap_size="1"), "'idmap_size' must be int"),
    (lambda d: d.update(setgroups=1), "'setgroups' must be bool"),
    (lambda d: d.update(network="bridge"), "'network' must be one of"),
    (lambda d: d.update(version=2), "version 2"),
    (lambda d: d["mounts"][0].update(kind="nfs"), "'kind' must be one of"),
    (lambda d: d["rootfs"].pop("upper"), "missing 'upper'"),
    (lambda d: d.update(env=["A=1", 2]), "'env' must be a list of strings"),
])
def test_step_spec_is_validated(change, match) -> None:
    import json
    d = json.loads(SPEC.to_json())
    change(d)
    with pytest.raises(SpecError, match=match):
        StepSpec.from_json(json.dumps(d))


def test_status_lines() -> None:
    rep = StepReport(stubs=("proc", "etc/hosts"), parents=(("", 1, 2), ("etc", 3, 4)))
    assert parse_status_line(rep.to_line()) == rep
    fail = SetupFailure(kind="idmap", message="needs ids")
    assert parse_status_line(fail.to_line()) == fail
    with pytest.raises(SpecError):
        parse_status_line(b'{"error": "other", "message": "x"}')


def test_nsinit_imports_only_stdlib_and_its_own_stdlib_modules() -> None:
    code = ("import sys; sys.path.insert(0, %r); from builder.sandbox.nsinit import main; "
            "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] not in sys.stdlib_module_names)))"
            % str(REPO))
    out = subprocess.run([sys.executable, "-S", "-E", "-c", code], capture_output=True, text=True, check=True).stdout
    assert set(out.split()) == {"__main__", "builder", "builder.layer", "builder.layer.inroot", "builder.sandbox",
                                "builder.sandbox.linux", "builder.sandbox.nsinit", "builder.sandbox.spec",
                                "builder.sandbox.users"}


# ---------------------------------------------------------------------- in-root paths

def test_inroot_resolve_stays_inside_and_both_users_agree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    os.symlink("/../../etc", root / "up")
    os.symlink("../../../outside", root / "etc" / "rel")
    assert inroot.resolve(root, "up/passwd") == str(root / "etc/passwd")
    assert inroot.resolve(root, "etc/rel/x") == str(root / "outside/x")
    assert inroot.resolve(root, "up", follow_final=False) == str(root / "up")
    assert resolve_in_root(root, "up/passwd") == root / "etc/passwd"
    with pytest.raises(FileNotFoundError):
        inroot.resolve(root, "up/missing/x", missing="raise")


def test_inroot_resolve_creates_missing_components(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    os.symlink("/real", root / "link")
    made: list[tuple[str, bool]] = []

    def create(rel: str, last: bool) -> None:
        made.append((rel, last))
        p = root / rel
        p.touch() if last else p.mkdir()

    assert inroot.resolve(root, "/link/dir/file", missing=create) == str(root / "real/dir/file")
    assert made == [("real", False), ("real/dir", False), ("real/dir/file", True)]
    assert (root / "real/dir/file").is_file()


def test_inroot_symlink_loop(tmp_path: Path) -> None:
    os.symlink("a", tmp_path / "b")
    os.symlink("b", tmp_path / "a")
    with pytest.raises(OSError, match="too many levels"):
        inroot.resolve(tmp_path, "a/x")
    with pytest.raises(errors.LayerError):
        resolve_in_root(tmp_path, "a/x")


# ---------------------------------------------------------------------- passwd / group

def test_users_reader_and_both_resolutions(tmp_path: Path) -> None:
    (tmp_path / "passwd").write_text("# comment\nroot:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
                                     "broken:x:zz:1\nnohome:x:7:7\n")
    (tmp_path / "group").write_text("root:x:0:\nstaff:x:50:app,other\napp:x:1000:app\n")
    pw, gr = read_passwd(str(tmp_path / "passwd")), read_group(str(tmp_path / "group"))
    assert [p.name for p in pw] == ["root", "app", "nohome"]
    assert resolve_user("app", pw, gr) == resolve_user("1000", pw, gr)
    ids = resolve_user("app", pw, gr)
    assert (ids.uid, ids.gid, ids.groups, ids.home) == (1000, 1000, (1000, 50), "/home/app")
    assert resolve_user("app:staff", pw, gr).gid == 50 and resolve_user("app:staff", pw, gr).groups == (50,)
    assert resolve_user(":50", pw, gr).uid == 0 and resolve_user(":50", pw, gr).groups == (50,)
    assert resolve_user("5:6", pw, gr).home == "/" and resolve_user("nohome", pw, gr).home == "/"
    assert resolve_user("", pw, gr).uid == 0
    with pytest.raises(UnknownUser, match="unable to find user ghost"):
        resolve_user("ghost", pw, gr)
    with pytest.raises(UnknownUser, match="unable to find group nogroup"):
        resolve_user("app:nogroup", pw, gr)
    assert resolve_owner("app", "", pw, gr) == (1000, 1000)
    assert resolve_owner("app", "staff", pw, gr) == (1000, 50)
    assert resolve_owner("ghost", "", pw, gr) == (0, 0)
    assert resolve_owner("33", "", pw, gr) == (33, 33)
    assert resolve_owner("33", "7", pw, gr) == (33, 7)
