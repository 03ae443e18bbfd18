"""Typed errors through a real sandbox worker: raised inside the worker's namespace, they arrive
in the parent as the same PybuildError class with the same fields."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from builder.errors import DigestMismatchError, SandboxError
from builder.image.digest import Digest
from builder.image.oci import Compression, Descriptor, MediaType
from builder.image.view import LayerRef
from builder.layer.diff import tree_changes
from builder.layer.tar import write_layer
from builder.sandbox import client
from builder.sandbox.client import SandboxOptions, Worker
from builder.solve.ops import FileOp, Mkdir
from builder.store.content import ContentStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (creates namespaces)")


def one_file_layer(store: ContentStore, tmp: Path) -> LayerRef:
    root, empty = tmp / "tree", tmp / "empty"
    root.mkdir()
    empty.mkdir()
    (root / "f").write_text("content\n")
    with store.writer() as w:
        st = write_layer(root, tree_changes(empty, root), w, compression=Compression.UNCOMPRESSED)
        d, size = w.commit()
    return LayerRef(descriptor=Descriptor(media_type=MediaType.oci_layer(Compression.UNCOMPRESSED), digest=d,
                                          size=size), diff_id=st.diff_id)


def test_digest_mismatch_in_the_worker_arrives_typed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store")
    good = one_file_layer(store, tmp_path)
    wrong = Digest.of_bytes(b"not this layer")
    bad = dataclasses.replace(good, diff_id=wrong)
    with Worker(store, SandboxOptions(root=tmp_path / "root")) as w:
        with pytest.raises(DigestMismatchError) as ei:
            w.run_file(base=(bad,), op=FileOp(actions=(Mkdir(path="/d"),)), sources={})
        assert ei.value.expected == str(wrong)
        assert ei.value.actual == str(good.diff_id)
        assert ei.value.what == "layer diff_id"
        assert w.run_file(base=(good,), op=FileOp(actions=(Mkdir(path="/d"),)), sources={}) is not None


def test_protocol_version_mismatch_with_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = client.Config
    monkeypatch.setattr(client, "Config", lambda **kw: real(version=99, **kw))
    w = Worker(ContentStore(tmp_path / "store"), SandboxOptions(root=tmp_path / "root"))
    with pytest.raises(SandboxError, match="protocol version mismatch"):
        w.start()
    w.close()
