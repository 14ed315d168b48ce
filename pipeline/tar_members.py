"""Tar members written block by block, so shards can be assembled by copying byte ranges of unit files.

The bytes are exactly what ``tarfile`` writes in USTAR format with fixed metadata (mtime 0, mode 644, no
owner), so the same records always give the same tar, and any tar reader can read it.
"""

from __future__ import annotations

import io
import tarfile

BLOCK = tarfile.BLOCKSIZE
RECORD = tarfile.RECORDSIZE


def member_bytes(name: str, data: bytes) -> bytes:
    """The header, data and padding of one member."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape")
    return header + data + b"\0" * ((-len(data)) % BLOCK)


def end_of_archive(length_so_far: int) -> bytes:
    """Two zero blocks, then zeros up to a whole record, as ``tarfile`` closes an archive."""
    end = length_so_far + 2 * BLOCK
    return b"\0" * (2 * BLOCK + (-end) % RECORD)


def read_members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar}
