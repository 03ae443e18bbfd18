"""The command line (click). The only module that reads argv and the environment; maps errors to
exit codes: 0 success, 1 failed build (Dockerfile errors included), 2 bad usage, 130 interrupted."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

import click

from builder.cliopts import (ca_bundle, docker_socket, registry_config_path, sandbox_limits, sandbox_options,
                             with_push, write_result_files)
from builder.errors import BuildCancelled, PybuildError, UsageError

COMMANDS = {"build", "images", "login", "logout", "doctor", "--help", "-h", "--version"}


def default_root(env: dict[str, str]) -> Path:
    if env.get("PYBUILD_ROOT"):
        return Path(env["PYBUILD_ROOT"])
    base = env.get("XDG_DATA_HOME") or str(Path(env.get("HOME") or Path.home()) / ".local" / "share")
    return Path(base) / "pybuild"


_OUTPUT_TYPES = ("oci", "docker", "registry", "image", "tar", "local")


def _bool(fields: dict[str, str], key: str, default: bool) -> bool:
    text = fields.pop(key, None)
    if text is None:
        return default
    if text.lower() in ("true", "1", ""):
        return True
    if text.lower() in ("false", "0"):
        return False
    raise click.BadParameter(f"{key}={text}: want true or false", param_hint="--output")


def _output_fields(text: str) -> dict[str, str]:
    import csv
    fields: dict[str, str] = {}
    for part in next(csv.reader([text])):      # CSV like buildx: type=image,"name=a:1,b:2"
        k, sep, v = part.partition("=")
        if not sep:
            raise click.BadParameter(f"{part!r} is not KEY=VALUE", param_hint="--output")
        fields[k.strip()] = v.strip()
    return fields


def parse_output(text: str) -> Any:
    """buildx --output: `type=oci|docker,dest=F[,compression=…][,tar=false]`,
    `type=image[,name=A,B][,push=true]`, `type=registry[,name=REF]`, `type=tar|local,dest=…`,
    `DIR` (local), `-` (tar to stdout)."""
    from builder.image.oci import Compression
    from builder.request import OutputSpec
    if text == "-":
        return OutputSpec(type="tar", dest="-")
    if "=" not in text:
        return OutputSpec(type="local", dest=text)
    fields = _output_fields(text)
    typ = fields.pop("type", "local")
    if typ not in _OUTPUT_TYPES:
        raise click.BadParameter(f"type={typ} is not supported ({', '.join(_OUTPUT_TYPES)})", param_hint="--output")
    dest = fields.pop("dest", "")
    comp = fields.pop("compression", "gzip")
    push = _bool(fields, "push", typ == "registry") if typ in ("image", "registry") else False
    tar = _bool(fields, "tar", True) if typ == "oci" else True
    image_typ = typ in ("oci", "docker", "image", "registry")
    oci_types = fields.pop("oci-mediatypes", None) if image_typ else None
    force = _bool(fields, "force-compression", False) if image_typ else False
    try:
        compression = Compression.parse(comp)
    except ValueError:
        raise click.BadParameter(f"compression={comp}: use gzip, zstd or uncompressed", param_hint="--output") from None
    if typ not in ("oci", "docker", "registry") and not push and comp != "gzip":
        raise click.BadParameter("compression= applies to type=oci, docker and pushed images", param_hint="--output")
    names = tuple(n for n in fields.pop("name", "").split(",") if n) if typ in ("image", "registry", "docker") else ()
    if fields:
        raise click.BadParameter(f"unknown key(s) {', '.join(sorted(fields))}", param_hint="--output")
    if typ in ("oci", "tar", "local") and not dest:
        raise click.BadParameter(f"type={typ} needs dest=", param_hint="--output")
    return OutputSpec(type=typ, dest=dest, compression=compression, names=names,  # type: ignore[arg-type]
                      push=push and typ == "image", tar=tar, force_compression=force,
                      oci_mediatypes=None if oci_types is None else _bool({"v": oci_types}, "v", True))


_ANNOTATION_LEVELS = ("manifest", "index", "manifest-descriptor")


def parse_annotations(items: Sequence[str]) -> tuple[Any, ...]:
    """--annotation `[LEVEL[PLATFORM,…]:]KEY=VALUE` as buildx; LEVEL manifest (default), index,
    manifest-descriptor. A platform qualifier is accepted (one platform is built)."""
    import re
    from builder.request import Annotation
    out = []
    for it in items:
        m = re.fullmatch(r"(?:([a-z-]+)(?:\[[^\]]*\])?:)?([^=:]+)=(.*)", it, re.S)
        if m is None:
            raise click.BadParameter(f"{it!r}: want [LEVEL:]KEY=VALUE", param_hint="--annotation")
        level = m.group(1) or "manifest"
        if level not in _ANNOTATION_LEVELS:
            raise click.BadParameter(f"{it!r}: level {level} is not one of {', '.join(_ANNOTATION_LEVELS)}",
                                     param_hint="--annotation")
        out.append(Annotation(key=m.group(2), value=m.group(3), level=level))  # type: ignore[arg-type]
    return tuple(out)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    """--label KEY=VALUE (repeatable)."""
    out: dict[str, str] = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not k or not sep:
            raise click.BadParameter(f"{it!r}: want KEY=VALUE", param_hint="--label")
        out[k] = v
    return out


def parse_source_date_epoch(env: dict[str, str]) -> int | None:
    """SOURCE_DATE_EPOCH: unset or empty → None; otherwise whole seconds since 1970, or an error."""
    text = env.get("SOURCE_DATE_EPOCH", "")
    if not text:
        return None
    if not text.isdigit():
        raise click.BadParameter(f"SOURCE_DATE_EPOCH={text!r}: want whole seconds since 1970-01-01")
    return int(text)


def parse_build_args(items: Sequence[str], env: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not k:
            raise click.BadParameter(f"{it!r}: empty name", param_hint="--build-arg")
        if sep:
            out[k] = v
        elif k in env:
            out[k] = env[k]
    return out


def parse_secrets(items: Sequence[str], env: dict[str, str]) -> dict[str, bytes]:
    """--secret id=ID[,src=PATH|,env=VAR] (type=file|env); a missing file is a usage error."""
    out: dict[str, bytes] = {}
    for it in items:
        fields = dict(p.partition("=")[::2] for p in it.split(","))
        unknown = set(fields) - {"id", "src", "source", "env", "type"}
        if unknown or fields.get("type", "file") not in ("file", "env"):
            raise click.BadParameter(f"{it!r}: want id=ID with src=PATH or env=VAR (type=file|env)",
                                     param_hint="--secret")
        sid = fields.get("id", "")
        src = fields.get("src") or fields.get("source") or ""
        var = fields.get("env", "")
        if not sid:
            raise click.BadParameter(f"{it!r}: id= is required", param_hint="--secret")
        if src:
            try:
                out[sid] = Path(src).read_bytes()
            except OSError as e:
                raise click.BadParameter(f"id={sid}: cannot read {src}: {e.strerror}", param_hint="--secret")
        elif var or sid in env:
            out[sid] = env.get(var or sid, "").encode()
        else:
            raise click.BadParameter(f"id={sid}: give src=PATH or env=VAR", param_hint="--secret")
    return out


def parse_contexts(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep or not k or not v:
            raise click.BadParameter(f"{it!r}: want NAME=VALUE", param_hint="--build-context")
        out[k] = v
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option("0.1.0", prog_name="pybuild")
def cli() -> None:
    """pybuild: build OCI images from Dockerfiles, rootless. `pybuild CONTEXT` = `pybuild build CONTEXT`."""


@cli.command("build")
@click.argument("context", type=click.Path(file_okay=False, path_type=Path))
@click.option("-f", "--file", "dockerfile", type=click.Path(dir_okay=False, path_type=Path),
              help="Dockerfile (default: CONTEXT/Dockerfile)")
@click.option("-t", "--tag", "tags", multiple=True, help="name:tag for the image (repeatable)")
@click.option("--build-arg", "build_args", multiple=True, help="KEY=VALUE, or KEY to take it from the environment")
@click.option("--target", help="build this stage")
@click.option("--no-cache", is_flag=True, help="do not use the cache")
@click.option("--pull", is_flag=True, help="always resolve base images from the registry")
@click.option("--progress", type=click.Choice(["auto", "plain", "tty", "quiet"]), default="auto")
@click.option("-q", "--quiet", is_flag=True, help="print only the image digest")
@click.option("--insecure-registry", "insecure", multiple=True, help="HOST[:PORT] reached over plain HTTP")
@click.option("--build-context", "build_contexts", multiple=True,
              help="NAME=DIR, NAME=oci-layout://DIR[:TAG] or NAME=docker-image://REF")
@click.option("-o", "--output", "outputs", multiple=True,
              help="type=oci|tar|local,dest=PATH[,compression=gzip|zstd|uncompressed]; DIR; - (tar to stdout)")
@click.option("--secret", "secrets", multiple=True, help="id=ID,src=PATH or id=ID,env=VAR")
@click.option("--platform", help="target platform (only the host's is supported)")
@click.option("--metadata-file", type=click.Path(dir_okay=False, path_type=Path), help="write build metadata JSON here")
@click.option("--iidfile", type=click.Path(dir_okay=False, path_type=Path), help="write the image digest here")
@click.option("--push", is_flag=True, help="push the image to the registry of each -t name (--output type=registry)")
@click.option("--load", is_flag=True, help="load the image into the Docker engine (--output type=docker)")
@click.option("--annotation", "annotations", multiple=True, help="[LEVEL:]KEY=VALUE annotation (manifest, index, manifest-descriptor)")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE label added to the image (repeatable)")
@click.option("--allow", "allow", multiple=True, type=click.Choice(["network.host", "security.insecure"]),
              help="grant an entitlement (network.host: RUN --network=host)")
@click.option("--snapshotter", type=click.Choice(["auto", "overlay", "native"]), default="auto", hidden=True,
              envvar="PYBUILD_SNAPSHOTTER")
@sandbox_options
def build_cmd(context: Path, dockerfile: Path | None, tags: tuple[str, ...], build_args: tuple[str, ...],
              target: str | None, no_cache: bool, pull: bool, progress: str, quiet: bool,
              insecure: tuple[str, ...], build_contexts: tuple[str, ...], outputs: tuple[str, ...],
              secrets: tuple[str, ...], platform: str | None, metadata_file: Path | None, iidfile: Path | None,
              push: bool, load: bool, annotations: tuple[str, ...], labels: tuple[str, ...], allow: tuple[str, ...], snapshotter: str,
              **sandbox: Any) -> None:
    """Build the Dockerfile in CONTEXT."""
    from builder.api import build
    from builder.request import BuildRequest
    from builder.registry.auth import docker_config_path
    from builder.progress import renderer_for
    env = dict(os.environ)
    outs = with_push(tuple(parse_output(o) for o in outputs), push)
    if load:
        from builder.request import OutputSpec
        outs = (*outs, OutputSpec(type="docker"))
    if sum(1 for o in outs if o.dest == "-") > 1:
        raise click.BadParameter("only one output can go to stdout", param_hint="--output")
    to_stdout = any(o.dest == "-" for o in outs)
    mode = "quiet" if quiet else progress
    if not context.is_dir():
        raise click.BadParameter(f"{context} is not a directory", param_hint="CONTEXT")
    if "security.insecure" in allow:
        raise click.BadParameter("security.insecure cannot be granted: pybuild runs steps rootless",
                                 param_hint="--allow")
    req = BuildRequest(
        context=context, dockerfile=dockerfile, tags=tags, build_args=parse_build_args(build_args, env),
        target=target, no_cache=no_cache, pull=pull, outputs=outs,
        build_contexts=parse_contexts(build_contexts), secrets=parse_secrets(secrets, env),
        insecure_registries=insecure, root=default_root(env), platform=platform,
        progress=renderer_for(mode, sys.stderr),
        docker_config=docker_config_path(env),
        snapshotter=snapshotter,  # type: ignore[arg-type]
        stdout=sys.stdout.buffer if to_stdout else None,
        source_date_epoch=parse_source_date_epoch(env),
        allow=allow, labels=parse_labels(labels), docker_socket=docker_socket(env),
        annotations=parse_annotations(annotations),
        registry_config=registry_config_path(env), ca_bundle=ca_bundle(env), **sandbox_limits(sandbox),
    )
    result = build(req)
    write_result_files(result, metadata_file, iidfile)
    click.echo(str(result.digest), err=to_stdout)


@cli.command("doctor")
def doctor_cmd() -> None:
    """Check what rootless builds need here; print the fix for each failure (exit 1 on one)."""
    from builder.doctor import render, run_checks
    checks = run_checks()
    click.echo(render(checks), nl=False)
    if any(c.status == "fail" for c in checks):
        sys.exit(1)


@cli.command("images")
def images_cmd() -> None:
    """List the images in pybuild's local store."""
    from builder.store.content import ContentStore
    from builder.store.root import prepare_root
    store = ContentStore(prepare_root(default_root(dict(os.environ))))
    rows = store.list_tags()
    click.echo(f"{'NAME':<60} {'DIGEST':<71} SIZE")
    for t in rows:
        click.echo(f"{t.name:<60} {str(t.descriptor.digest):<71} {t.descriptor.size}")


@cli.command("login")
@click.argument("registry")
@click.option("-u", "--username", required=True, help="user name")
@click.option("--password-stdin", is_flag=True, help="read the password (or token) from stdin")
@click.option("-p", "--password", help="the password (prefer --password-stdin)")
@click.option("--insecure-registry", "insecure", is_flag=True, help="plain HTTP to this registry")
def login_cmd(registry: str, username: str, password_stdin: bool, password: str | None, insecure: bool) -> None:
    """Check credentials for REGISTRY and save them in the docker config (as `docker login`)."""
    from builder.registry.login import login
    if password_stdin == (password is not None):
        raise click.BadParameter("give exactly one of --password-stdin and --password", param_hint="--password")
    secret = sys.stdin.read().rstrip("\r\n") if password_stdin else (password or "")
    if not secret:
        raise click.BadParameter("the password is empty", param_hint="--password-stdin")
    from builder.registry.config import load_registry_config
    env = dict(os.environ)
    cfg = load_registry_config(registry_config_path(env), ca_bundle=ca_bundle(env))
    login(_config_path(), registry, username, secret, insecure=insecure, registry_config=cfg)
    click.echo("Login Succeeded")


@cli.command("logout")
@click.argument("registry")
def logout_cmd(registry: str) -> None:
    """Remove REGISTRY's credentials from the docker config (as `docker logout`)."""
    from builder.registry.login import logout
    if logout(_config_path(), registry):
        click.echo(f"Removing login credentials for {registry}")
    else:
        click.echo(f"Not logged in to {registry}")


def _config_path() -> Path:
    from builder.registry.credentials import docker_config_path
    path = docker_config_path(dict(os.environ))
    if path is None:
        raise click.UsageError("set HOME or DOCKER_CONFIG: there is no docker config file to write")
    return path


def _on_term(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] not in COMMANDS:
        args.insert(0, "build")
    signal.signal(signal.SIGTERM, _on_term)
    try:
        cli.main(args=args, prog_name="pybuild", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("pybuild: interrupted", err=True)
        sys.exit(130)
    except (KeyboardInterrupt, BuildCancelled):
        click.echo("pybuild: interrupted", err=True)
        sys.exit(130)
    except UsageError as e:
        click.echo(f"pybuild: error: {e}", err=True)
        sys.exit(2)
    except PybuildError as e:
        click.echo(f"pybuild: error: {e}", err=True)
        sys.exit(1)
    except OSError as e:     # unexpected I/O trouble: a message, not a traceback
        click.echo(f"pybuild: error: {e}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
