"""Push an image from the content store to one or more registry references.

Contracts:
- references are grouped by repository; each repository gets every blob (config and layers),
  then — only once every blob answers HEAD 200 there — the manifest under each of its tags.
  A tag therefore never points at a manifest whose blobs are missing.
- a blob already in the repository is skipped (HEAD); one known to be in another repository of
  the same registry (a base image's, or one pushed earlier in this call) is cross-mounted; else it
  is uploaded from the store (verified while read): monolithic up to `chunk_size` bytes, in PATCH
  chunks above. At most `parallel` blobs are in flight per repository.
- a failed upload (transport failure, 5xx, 416, an unknown upload session) is restarted from the
  beginning at most `restarts` times; other errors (denied, digest invalid, …) end the push with
  the registry's error, which names registry, repository and the distribution error codes.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Callable, Mapping, Sequence

from builder.errors import DigestMismatchError, RegistryError
from builder.image.digest import Digest
from builder.image.oci import Descriptor
from builder.image.reference import Reference
from builder.store.content import ContentStore

if TYPE_CHECKING:    # requests loads only when a registry is used
    from builder.registry.client import RegistryClient

#: statuses after which a blob upload is started again from the beginning
_RESTART_STATUSES = frozenset({404, 416})


@dataclass(frozen=True, slots=True, kw_only=True)
class PushOptions:
    parallel: int = 4                    # blobs in flight per repository
    chunk_size: int = 32 << 20           # larger blobs go up in PATCH chunks of this size
    restarts: int = 2                    # fresh starts of a failed blob upload


@dataclass(frozen=True, slots=True, kw_only=True)
class PushImage:
    """What to push: the manifest (its bytes are in the store) and every blob it names.
    `origins`: for a blob, a repository that has it already (a base image's), for mounts."""
    manifest: Descriptor
    blobs: tuple[Descriptor, ...]
    origins: Mapping[Digest, Reference] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class PushedBlob:
    repository: str                      # registry/repository
    digest: Digest
    how: str                             # "exists", "mounted" or "uploaded"


def push_image(client: RegistryClient, store: ContentStore, image: PushImage, refs: Sequence[Reference],
               options: PushOptions = PushOptions()) -> tuple[PushedBlob, ...]:
    """Push `image` to every reference in `refs` (tags or digests); return what happened to each
    blob in each repository. Raises RegistryError (AuthError, NotFoundError, …) on failure."""
    raw = store.read_bytes(image.manifest.digest)
    report: list[PushedBlob] = []
    seen: dict[Digest, list[Reference]] = {}          # blob -> repositories that have it (this push)
    for repo, tags in _by_repository(refs).items():
        report += _push_blobs(client, store, repo, image, seen, options)
        missing = [b.digest for b in image.blobs if not client.blob_exists(repo, b.digest)]
        if missing:
            raise RegistryError(f"{repo.name}: blobs {', '.join(map(str, missing))} are missing after the "
                                "upload; the manifest was not pushed")
        for ref in tags:
            client.put_manifest(ref, image.manifest.media_type, raw)
        for b in image.blobs:
            seen.setdefault(b.digest, []).append(repo)
    return tuple(report)


def _by_repository(refs: Sequence[Reference]) -> dict[Reference, list[Reference]]:
    out: dict[Reference, list[Reference]] = {}
    for r in refs:
        tags = out.setdefault(r.with_repository(r.repository), [])
        if r not in tags:
            tags.append(r)
    return out


def _push_blobs(client: RegistryClient, store: ContentStore, repo: Reference, image: PushImage,
                seen: Mapping[Digest, list[Reference]], options: PushOptions) -> list[PushedBlob]:
    def one(desc: Descriptor) -> PushedBlob:
        sources = [*seen.get(desc.digest, ()), *([image.origins[desc.digest]] if desc.digest in image.origins else [])]
        mount = next((s for s in sources if s.registry == repo.registry and s.repository != repo.repository), None)
        how = _upload(client, repo, desc, lambda: _open(store, desc), mount, options)
        return PushedBlob(repository=repo.name, digest=desc.digest, how=how)

    blobs = list({b.digest: b for b in image.blobs}.values())
    with ThreadPoolExecutor(max_workers=max(1, min(options.parallel, len(blobs) or 1))) as pool:
        futures = [pool.submit(one, b) for b in blobs]
        errors = [f.exception() for f in futures]
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return [f.result() for f in futures]


def _upload(client: RegistryClient, repo: Reference, desc: Descriptor, open_fn: Callable[[], BinaryIO],
            mount: Reference | None, options: PushOptions) -> str:
    for attempt in range(options.restarts + 1):
        try:
            return client.upload_blob(repo, desc, open_fn, mount_from=mount, chunk_size=options.chunk_size)
        except RegistryError as e:
            restartable = e.status is None or e.status >= 500 or e.status in _RESTART_STATUSES
            if attempt == options.restarts or not restartable or isinstance(e, DigestMismatchError):
                raise
            mount = None
    raise AssertionError("unreachable")


def _open(store: ContentStore, desc: Descriptor) -> BinaryIO:
    return store.open_verified(desc.digest, desc.size)  # type: ignore[return-value]
