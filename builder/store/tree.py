"""Removal of snapshot trees without recursion: the implementation lives in
`builder.layer.rmtree` (layer application removes what a layer replaces with it too)."""
from __future__ import annotations

from builder.layer.rmtree import MAX_DEPTH, remove_tree

__all__ = ["MAX_DEPTH", "remove_tree"]
