"""Stable seeds for the loader's stages: the same parts always give the same seed, in any process."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from its parts (Python's hash() is salted per process, so it is not used)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1
