"""Option parsing of the command line that is not click itself: sandbox limits (sizes like
`512m`), waived protections, push and load outputs, registry configuration paths, result files.
Pure functions over their arguments and the environment mapping they are given."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kb": 1 << 10, "m": 1 << 20, "mb": 1 << 20, "g": 1 << 30, "gb": 1 << 30}


def parse_size(text: str, flag: str) -> int:
    """`512m`, `2g`, `1048576` (bytes, binary units as docker's --memory)."""
    s = text.strip().lower()
    num = s.rstrip("bkmg")
    unit = s[len(num):]
    if not num.isdigit() or unit not in SIZE_UNITS:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 512m, 2g)", param_hint=flag)
    return int(num) * SIZE_UNITS[unit]


def sandbox_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The build command's sandbox flags (limits and waived protections)."""
    opts = [
        click.option("--step-memory", help="memory a RUN step may use, e.g. 512m (needs a delegated cgroup v2)"),
        click.option("--step-pids", type=int, help="processes a RUN step may have at once (the same)"),
        click.option("--step-log-limit", help="bytes of a step's output shown and kept in memory, e.g. 2m "
                                              "(the full log goes to a file)"),
        click.option("--max-layer-expansion", default="1g",
                     help="how far a layer or ADD archive may unpack (with --max-expansion-ratio); none: no cap"),
        click.option("--max-expansion-ratio", type=int, default=100,
                     help="... and how many times its compressed size (both must be passed to refuse)"),
        click.option("--sandbox-relax", "relaxed", multiple=True,
                     help="go on without this step protection where the kernel refuses it: capabilities, "
                          "masked-paths, network, no-new-privs or seccomp (repeatable)"),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def sandbox_limits(values: dict[str, Any]) -> dict[str, Any]:
    """BuildRequest keywords from the sandbox flags' values."""
    def size(key: str, flag: str) -> int | None:
        v = values.get(key)
        return None if v is None else parse_size(v, flag)
    from builder.sandbox.spec import PROTECTIONS
    relaxed = tuple(values.get("relaxed") or ())
    for name in relaxed:
        if name not in PROTECTIONS:
            raise click.BadParameter(f"{name!r}: use one of {', '.join(PROTECTIONS)}", param_hint="--sandbox-relax")
    cap = values.get("max_layer_expansion") or "1g"
    return {"step_memory": size("step_memory", "--step-memory"), "step_pids": values.get("step_pids"),
            "step_log_limit": size("step_log_limit", "--step-log-limit"),
            "max_layer_expansion": None if cap == "none" else parse_size(cap, "--max-layer-expansion"),
            "max_expansion_ratio": values.get("max_expansion_ratio") or 100,
            "relaxed": relaxed}


def with_push(outs: tuple[Any, ...], push: bool) -> tuple[Any, ...]:
    """`--push` as buildx: image outputs get push=true; with none, a registry output is added."""
    if not push:
        return outs
    from dataclasses import replace
    from builder.request import OutputSpec
    if any(o.type in ("image", "registry") for o in outs):
        return tuple(replace(o, push=True) if o.type == "image" else o for o in outs)
    return (*outs, OutputSpec(type="registry"))


def registry_config_path(env: dict[str, str]) -> Path | None:
    """`$PYBUILD_CONFIG`, else `$XDG_CONFIG_HOME/pybuild/config.toml` (`~/.config/…`)."""
    if env.get("PYBUILD_CONFIG"):
        return Path(env["PYBUILD_CONFIG"])
    base = env.get("XDG_CONFIG_HOME") or (str(Path(env["HOME"]) / ".config") if env.get("HOME") else "")
    return Path(base) / "pybuild" / "config.toml" if base else None


def ca_bundle(env: dict[str, str]) -> Path | None:
    """The CA bundle for HTTPS registries: `$SSL_CERT_FILE`, else `$REQUESTS_CA_BUNDLE`."""
    value = env.get("SSL_CERT_FILE") or env.get("REQUESTS_CA_BUNDLE")
    return Path(value) if value else None


def docker_socket(env: dict[str, str]) -> str:
    """The Docker engine's unix socket: `$DOCKER_HOST` (unix://PATH only) or /var/run/docker.sock."""
    host = env.get("DOCKER_HOST", "")
    if not host:
        return "/var/run/docker.sock"
    if not host.startswith("unix://"):
        raise click.BadParameter(f"DOCKER_HOST={host}: only unix:// sockets are supported for --load")
    return host[len("unix://"):]


def write_result_files(result: Any, metadata_file: Path | None, iidfile: Path | None) -> None:
    """--metadata-file (BuildKit's keys, JSON) and --iidfile (the image digest, no newline)."""
    import json
    from builder.store.content import atomic_write
    if metadata_file is not None:
        atomic_write(metadata_file, json.dumps(dict(result.metadata), indent=2, sort_keys=True).encode() + b"\n")
    if iidfile is not None:
        atomic_write(iidfile, str(result.digest).encode())
