"""Fake ImageResolver for frontend tests: configs like the conformance base images."""
from __future__ import annotations

import hashlib

from builder.image.view import ResolvedImage
from builder.image.oci import ContainerConfig, History, ImageConfig, Platform

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeResolver:
    """Resolves any reference; `*busybox-nonroot*` gets the nonroot config with an ONBUILD trigger."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def _config(self, ref: str, platform: Platform) -> ImageConfig:
        if "busybox-nonroot" in ref:
            cc = ContainerConfig(user="app", working_dir="/home/app", env=(PATH_ENV, "HOME=/home/app"),
                                 cmd=("sh",), labels=(("org.example.conformance.base", "busybox-nonroot"),),
                                 onbuild=("RUN echo onbuild-ran > /home/app/onbuild.txt",))
        else:
            cc = ContainerConfig(env=(PATH_ENV,), cmd=("sh",))
        return ImageConfig(platform=platform, config=cc,
                           history=(History(created_by="BusyBox base layer"),))

    def resolve_image(self, ref: str, platform: Platform) -> ResolvedImage:
        self.calls.append(("image", ref))
        full = ref if "/" in ref.split(":")[0] or "." in ref.split("/")[0] else f"docker.io/library/{ref}"
        return ResolvedImage(ref=full, digest=_digest(full), config=self._config(ref, platform))

    def resolve_oci_layout(self, path: str, tag: str, platform: Platform) -> ResolvedImage:
        self.calls.append(("oci-layout", f"{path}:{tag}"))
        return ResolvedImage(ref=f"oci-layout://{path}:{tag}", digest=_digest(path + tag),
                             config=self._config(path, platform))
