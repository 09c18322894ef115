"""Read exactly the dirty extents of an NBD export into a sparse file.

The limit of the incremental bench (scripts/bench/inc.ts): usage
read-dirty.py URI OUT CONTEXT, CONTEXT being the export's dirty bitmap,
e.g. qemu:dirty-bitmap:backup-vda. Asks block status of that context over
the whole export, reads each dirty extent (in requests of at most 32 MiB,
the NBD maximum), writes it at its offset into OUT (sized like the export,
holes elsewhere) and fsyncs OUT, as a backup's sink does. Prints the bytes
read. Debian's python3-libnbd (libnbd-bin's nbdsh uses the same module).
"""
import os
import sys

import nbd

MAX_REQUEST = 32 * 1024 * 1024
MAX_STATUS = 1 << 30
DIRTY = 1

uri, out, context = sys.argv[1:4]
h = nbd.NBD()
h.add_meta_context(context)
h.connect_uri(uri)
if not h.can_meta_context(context):
    sys.exit(f"{uri} has no meta context {context}")
size = h.get_size()

dirty = []
reached = [0]


def on_extents(metacontext, offset, entries, err):
    if metacontext != context:
        return 0
    at = offset
    for length, flags in zip(entries[0::2], entries[1::2]):
        if flags & DIRTY:
            dirty.append((at, length))
        at += length
    reached[0] = at
    return 0


while reached[0] < size:
    h.block_status(min(size - reached[0], MAX_STATUS), reached[0], on_extents)

fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
os.ftruncate(fd, size)
total = 0
for start, length in dirty:
    at, end = start, min(start + length, size)
    while at < end:
        n = min(MAX_REQUEST, end - at)
        os.pwrite(fd, h.pread(n, at), at)
        at += n
        total += n
os.fsync(fd)
os.close(fd)
h.shutdown()
print(total)
