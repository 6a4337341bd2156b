"""Seeds derived from names, so each problem's random stream is fixed by (seed, id) alone."""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A seed in [0, 2**30) from any parts; leaves room for `seed + j` sample streams."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % (1 << 30)
