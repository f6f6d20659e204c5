"""An LMDB file checked before the lmdb library maps it: no page it will read lies outside the file.

The lmdb library maps `data.mdb` into memory and trusts it: a truncated file (its hash in dataset.json updated to
match) makes the first read of a missing page end the process with SIGBUS, and a corrupted page can send a read
past the end of the map. So before any `lmdb.open`, the file is read here with ordinary reads (never mapped): both
meta pages, then every page of the main tree from its root, checking that each page number is one the meta pages
account for, that the file holds that many pages, that every node, key and value lies inside its page (or, for
large values, inside overflow pages the file holds), and that the tree has the entries its meta page counts. A
file that fails is one DatasetError naming it; one that passes cannot make lmdb read outside the file.

The layout is LMDB's own (lmdb.h / mdb.c, version 0.9, 64-bit little-endian builds).
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from pmmrec.errors import DatasetError

MAGIC = 0xBEEFC0DE
DATA_VERSION = 1
PAGE_HEADER = struct.Struct("<QHHHH")  # mp_pgno, mp_pad, mp_flags, mp_lower, mp_upper (mp_pages = lower | upper<<16)
DB = struct.Struct("<IHHQQQQQ")  # md_pad (page size in the free DB), md_flags, md_depth, 3 page counts, entries, root
META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")  # magic, version, address, mapsize, dbs[2], last_pg, txnid
NODE = struct.Struct("<HHHH")  # mn_lo, mn_hi, mn_flags, mn_ksize
P_BRANCH, P_LEAF, P_OVERFLOW, P_META = 0x01, 0x02, 0x04, 0x08
F_BIGDATA, F_SUBDATA, F_DUPDATA = 0x01, 0x02, 0x04
P_INVALID = (1 << 64) - 1
MAX_DEPTH = 64
_checked: set[tuple[int, int, int, int]] = set()
_checked_lock = threading.Lock()


class _Meta:
    def __init__(self, raw: bytes, where: str) -> None:
        fields = META.unpack_from(raw, PAGE_HEADER.size)
        self.magic, self.version = fields[0], fields[1]
        free, main = fields[4:12], fields[12:20]
        self.page_size = free[0]
        self.flags, self.depth, self.entries, self.root = main[1], main[2], main[6], main[7]
        self.last_page, self.txnid = fields[20], fields[21]
        flags = PAGE_HEADER.unpack_from(raw)[2]
        if not flags & P_META or self.magic != MAGIC:
            raise DatasetError(f"{where}: not an LMDB file (no valid meta page)")
        if self.version != DATA_VERSION:
            raise DatasetError(f"{where}: LMDB data version {self.version} is not supported (expected {DATA_VERSION})")


def _read(fd: int, offset: int, size: int, where: str) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise DatasetError(f"{where}: truncated LMDB file (page at byte {offset:,} is incomplete)")
    return data


def _metas(fd: int, size: int, where: str) -> _Meta:
    """The current meta page (the one with the higher transaction id), both checked."""
    if size < 2 * 512:
        raise DatasetError(f"{where}: {size:,} bytes is too short for an LMDB file")
    first = _Meta(_read(fd, 0, PAGE_HEADER.size + META.size, where), where)
    page_size = first.page_size
    if page_size < 512 or page_size > 65536 or page_size & (page_size - 1):
        raise DatasetError(f"{where}: LMDB page size {page_size} is invalid")
    second = _Meta(_read(fd, page_size, PAGE_HEADER.size + META.size, where), where)
    meta = second if second.txnid > first.txnid else first
    if meta.page_size != page_size:
        raise DatasetError(f"{where}: the two LMDB meta pages disagree on the page size")
    needed = (meta.last_page + 1) * page_size
    if meta.last_page < 1 or needed > size:
        raise DatasetError(
            f"{where}: truncated LMDB file: its meta page counts {meta.last_page + 1:,} pages ({needed:,} bytes) "
            f"but the file has {size:,} bytes"
        )
    if meta.flags:
        raise DatasetError(f"{where}: the LMDB database uses flags {meta.flags:#x} (sorted duplicates, ...) pmmrec never writes")
    return meta


def _check_page_number(number: int, meta: _Meta, where: str) -> None:
    if not 2 <= number <= meta.last_page:
        raise DatasetError(f"{where}: corrupted LMDB file (page number {number:,} outside 2..{meta.last_page:,})")


def _nodes(page: bytes, page_size: int, where: str, number: int) -> list[tuple[int, int, int, int, int]]:
    """(offset, lo, hi, flags, key size) of every node of a branch or leaf page, each inside the page."""
    _, _, _, lower, upper = PAGE_HEADER.unpack_from(page)
    if not PAGE_HEADER.size <= lower <= upper <= page_size or (lower - PAGE_HEADER.size) % 2:
        raise DatasetError(f"{where}: corrupted LMDB page {number:,} (bounds {lower}..{upper})")
    count = (lower - PAGE_HEADER.size) // 2
    nodes = []
    for index in range(count):
        (offset,) = struct.unpack_from("<H", page, PAGE_HEADER.size + 2 * index)
        if offset < upper or offset + NODE.size > page_size:
            raise DatasetError(f"{where}: corrupted LMDB page {number:,} (node {index} at {offset})")
        lo, hi, flags, key_size = NODE.unpack_from(page, offset)
        if offset + NODE.size + key_size > page_size:
            raise DatasetError(f"{where}: corrupted LMDB page {number:,} (key of node {index} runs past the page)")
        nodes.append((offset, lo, hi, flags, key_size))
    return nodes


def _check_leaf_node(fd: int, page: bytes, node: tuple[int, int, int, int, int], meta: _Meta, where: str) -> None:
    offset, lo, hi, flags, key_size = node
    data_size = lo | hi << 16
    start = offset + NODE.size + key_size
    if flags & (F_SUBDATA | F_DUPDATA):
        raise DatasetError(f"{where}: the LMDB file holds sub-databases or duplicates, which pmmrec never writes")
    if not flags & F_BIGDATA:
        if start + data_size > meta.page_size:
            raise DatasetError(f"{where}: corrupted LMDB file (a value runs past its page)")
        return
    if start + 8 > meta.page_size:
        raise DatasetError(f"{where}: corrupted LMDB file (an overflow reference runs past its page)")
    (first,) = struct.unpack_from("<Q", page, start)
    _check_page_number(first, meta, where)
    header = PAGE_HEADER.unpack_from(_read(fd, first * meta.page_size, PAGE_HEADER.size, where))
    pages = header[3] | header[4] << 16
    if not header[2] & P_OVERFLOW or pages < 1 or first + pages - 1 > meta.last_page:
        raise DatasetError(f"{where}: corrupted LMDB file (overflow page {first:,})")
    if data_size > pages * meta.page_size - PAGE_HEADER.size:
        raise DatasetError(f"{where}: corrupted LMDB file (a value of {data_size:,} bytes is larger than its pages)")


def _walk(fd: int, meta: _Meta, where: str) -> None:
    """Every page of the main tree is inside the file and well formed; the leaves hold `entries` values."""
    if meta.root == P_INVALID:
        if meta.entries:
            raise DatasetError(f"{where}: corrupted LMDB file (no tree but {meta.entries:,} entries)")
        return
    _check_page_number(meta.root, meta, where)
    stack, seen, entries = [(meta.root, 1)], set(), 0
    while stack:
        number, depth = stack.pop()
        if number in seen or depth > min(meta.depth, MAX_DEPTH):
            raise DatasetError(f"{where}: corrupted LMDB file (page {number:,} reached twice or too deep)")
        seen.add(number)
        page = _read(fd, number * meta.page_size, meta.page_size, where)
        stored, _, flags, _, _ = PAGE_HEADER.unpack_from(page)
        if stored != number or not flags & (P_BRANCH | P_LEAF) or (flags & P_BRANCH and flags & P_LEAF):
            raise DatasetError(f"{where}: corrupted LMDB page {number:,} (header says page {stored:,}, flags {flags:#x})")
        nodes = _nodes(page, meta.page_size, where, number)
        if flags & P_BRANCH:
            if not nodes:
                raise DatasetError(f"{where}: corrupted LMDB page {number:,} (an empty branch)")
            for _, lo, hi, node_flags, _ in nodes:
                child = lo | hi << 16 | node_flags << 32
                _check_page_number(child, meta, where)
                stack.append((child, depth + 1))
        else:
            for node in nodes:
                _check_leaf_node(fd, page, node, meta, where)
            entries += len(nodes)
    if entries != meta.entries:
        raise DatasetError(f"{where}: corrupted LMDB file ({entries:,} values, its meta page says {meta.entries:,})")


def check_lmdb_file(path: Path) -> None:
    """Refuse (DatasetError naming `path`) an LMDB data file that lmdb could read outside of; once per file version."""
    where = str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read ({exc.strerror or exc})") from None
    try:
        status = os.fstat(fd)
        identity = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)
        with _checked_lock:
            if identity in _checked:
                return
        meta = _metas(fd, status.st_size, where)
        _walk(fd, meta, where)
    except OSError as exc:
        raise DatasetError(f"{where}: cannot read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    with _checked_lock:
        _checked.add(identity)
