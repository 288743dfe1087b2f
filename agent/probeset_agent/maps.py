"""Reading and deleting BPF map rows as raw bytes (BCC tables): the only map I/O of a scrape."""

from __future__ import annotations

import ctypes as ct
import errno
import os


def read_raw(table, chunk: int = 4096):
    """All entries of a BCC table as (key bytes, value bytes), with BPF_MAP_LOOKUP_BATCH in
    fixed-size chunks: a scrape costs per entry, not per max_entries, and no ctypes object is made
    per entry. Per-CPU values are the CPUs' values back to back. Falls back to iteration on kernels
    without batch lookups."""
    from bcc.libbcc import lib
    key_size, value_size = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    keys = (table.Key * chunk)()
    values = (table.Leaf * chunk)()
    token = ct.c_uint32(0)
    count = ct.c_uint32(0)
    first = True
    while True:
        count.value = chunk
        res = lib.bpf_lookup_batch(table.map_fd, None if first else ct.byref(token), ct.byref(token),
                                   ct.byref(keys), ct.byref(values), ct.byref(count))
        err = ct.get_errno()
        if res != 0 and err != errno.ENOENT:
            if first and err in (errno.EINVAL, 524):      # 524: ENOTSUPP, no batch ops for this map
                for k, v in table.items():
                    yield bytes(k), bytes(v)
                return
            if err == errno.ENOSPC:   # one hash bucket holds more than `chunk` entries
                chunk *= 4
                keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
                continue
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        n = count.value
        kbuf = ct.string_at(keys, n * key_size)
        vbuf = ct.string_at(values, n * value_size)
        for i in range(n):
            yield kbuf[i * key_size:(i + 1) * key_size], vbuf[i * value_size:(i + 1) * value_size]
        if res != 0:  # ENOENT: no more entries
            return
        first = False


def delete_row(table, raw: bytes) -> None:
    try:
        del table[table.Key.from_buffer_copy(raw)]
    except KeyError:
        pass   # already gone
