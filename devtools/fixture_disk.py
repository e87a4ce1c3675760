"""TEST FIXTURE: a realistic sparse raw disk for the upload tests and bench/upload_bytes.py (not a built image).

1 GiB virtual: a GPT-like header and backup header, several MiB-sized extents of incompressible data at scattered
64 KiB-aligned offsets, a region of explicit zeros written into the file (allocated but empty, as image builders leave
them), and holes everywhere else. The bytes are deterministic, and :func:`data_blocks` derives from the layout (not
from a scan) which blocks hold data, so a test can check what an upload sent against what it should have sent.
"""

from __future__ import annotations

import random
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
# (offset, length) of the fixture disk's data: header, extents, backup header at the very end.
DATA_EXTENTS = (
    (0, 34 * 512),
    (1 * MIB, 6 * MIB),
    (97 * MIB + 64 * 1024, 3 * MIB),
    (300 * MIB, 5 * MIB + 128 * 1024),
    (512 * MIB + 448 * 1024, 2 * MIB),
    (800 * MIB, 8 * MIB),
    (GIB - 33 * 512, 33 * 512),
)
ZERO_EXTENT = (600 * MIB, 4 * MIB)


def data_blocks(granularity: int, size: int = GIB) -> set[int]:
    """Indexes of the `granularity`-sized blocks of the fixture disk that hold data (from its layout, not a scan)."""
    return {
        index
        for offset, length in DATA_EXTENTS
        for index in range(offset // granularity, min(-(-(offset + length) // granularity), -(-size // granularity)))
    }


def write_fixture_disk(path: Path, size: int = GIB) -> None:
    """Write the sparse fixture disk described above (deterministic bytes)."""
    rng = random.Random(7)  # noqa: S311 (reproducible filler bytes, not secrets)
    with path.open("wb") as f:
        f.truncate(size)
        for offset, length in DATA_EXTENTS:
            f.seek(offset)
            f.write(rng.randbytes(length))
        f.seek(ZERO_EXTENT[0])
        f.write(bytes(ZERO_EXTENT[1]))
