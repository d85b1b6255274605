"""Content-keyed caches: a hash of everything an output depends on, and an on-disk text
store under the cache folder (`.cache/literate`), so a warm build runs neither Graphviz
nor an example."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tools.literate.files import atomic_write

# Bump to invalidate every cached output when the drawing code changes.
ENGINE_VERSION = "4"


def content_hash(*parts: str) -> str:
    """SHA-256 of the parts, separated so that ("ab", "c") and ("a", "bc") differ."""
    digest = hashlib.sha256(ENGINE_VERSION.encode())
    for part in parts:
        digest.update(b"\0" + part.encode("utf-8"))
    return digest.hexdigest()


def cached_text(cache_dir: Path, kind: str, key: str, make) -> str:
    """Return the text stored for `key`, or make it, store it atomically, and return
    it."""
    path = cache_dir / kind / f"{key}.txt"
    if path.exists():
        return path.read_text(encoding="utf-8")
    text = make()
    atomic_write(path, text)
    return text
