"""Reading and deleting BPF map rows as raw bytes (BCC tables): the only map I/O of a scrape."""

from __future__ import annotations

import ctypes as ct
import errno
import os
from dataclasses import dataclass
from typing import Iterable, Iterator


@dataclass(frozen=True)
class Rows:
    """A map's entries as two buffers, keys and values back to back (key_size, value_size bytes
    each): what the readout decodes in bulk, with memoryview casts and struct.iter_unpack rather
    than one bytes object and a few calls per row (readout.py). Iterates as (key, value) pairs."""

    keys: bytes
    key_size: int
    values: bytes
    value_size: int

    def __len__(self) -> int:
        return len(self.keys) // self.key_size if self.key_size else 0

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        k, v = self.key_size, self.value_size
        for i in range(len(self)):
            yield self.keys[i * k:(i + 1) * k], self.values[i * v:(i + 1) * v]

    def key_list(self, size: int | None = None) -> list[bytes]:
        """Each key, or each key's first `size` bytes."""
        k = self.key_size
        if not k:
            return []
        size = k if size is None else size
        return [self.keys[i:i + size] for i in range(0, len(self.keys), k)]

    @classmethod
    def of(cls, rows: "Rows | Iterable[tuple[bytes, bytes]]") -> "Rows":
        """Rows as they are, or (key, value) pairs (an array's rows turned into a hash's; tests)."""
        if isinstance(rows, Rows):
            return rows
        pairs = list(rows)
        if not pairs:
            return cls(b"", 0, b"", 0)
        return cls(b"".join(k for k, _ in pairs), len(pairs[0][0]), b"".join(v for _, v in pairs), len(pairs[0][1]))


def read_rows(table, chunk: int = 4096) -> Rows:
    """All entries of a BCC table (read_raw), as one Rows."""
    keys, values = [], []
    for kbuf, vbuf in _read_chunks(table, chunk):
        keys.append(kbuf)
        values.append(vbuf)
    return Rows(b"".join(keys), ct.sizeof(table.Key), b"".join(values), ct.sizeof(table.Leaf))


def read_raw(table, chunk: int = 4096) -> Iterator[tuple[bytes, bytes]]:
    """All entries of a BCC table as (key bytes, value bytes)."""
    key_size, value_size = ct.sizeof(table.Key), ct.sizeof(table.Leaf)
    for kbuf, vbuf in _read_chunks(table, chunk):
        for i in range(len(kbuf) // key_size):
            yield kbuf[i * key_size:(i + 1) * key_size], vbuf[i * value_size:(i + 1) * value_size]


def _read_chunks(table, chunk: int) -> Iterator[tuple[bytes, bytes]]:
    """A BCC table's entries as (keys, values) buffers, with BPF_MAP_LOOKUP_BATCH in fixed-size
    chunks: a scrape costs per entry, not per max_entries, and no ctypes object is made per entry.
    Per-CPU values are the CPUs' values back to back. Falls back to iteration on kernels without
    batch lookups."""
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
                pairs = [(bytes(k), bytes(v)) for k, v in table.items()]
                yield b"".join(k for k, _ in pairs), b"".join(v for _, v in pairs)
                return
            if err == errno.ENOSPC:   # one hash bucket holds more than `chunk` entries
                chunk *= 4
                keys, values = (table.Key * chunk)(), (table.Leaf * chunk)()
                continue
            raise OSError(err, f"BPF_MAP_LOOKUP_BATCH: {os.strerror(err)}")
        n = count.value
        yield ct.string_at(keys, n * key_size), ct.string_at(values, n * value_size)
        if res != 0:  # ENOENT: no more entries
            return
        first = False


def clear_rows(table) -> None:
    """Delete the entries one batch read finds. Not BCC's clear(): it walks the keys and raises
    KeyError when the BPF program deleted one first (a return probe of a busy function such as
    malloc does, all the time), and on a map the program keeps filling its walk need not end."""
    for raw, _ in read_raw(table):
        delete_row(table, raw)


def delete_row(table, raw: bytes) -> None:
    try:
        del table[table.Key.from_buffer_copy(raw)]
    except KeyError:
        pass   # already gone
