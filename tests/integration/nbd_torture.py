#!/usr/bin/env python3
"""nbd_torture: NBD conformance and robustness cases against a running nbdmirror.

Each case runs on fresh connections and puts exact bytes on the wire with the stdlib client
in tests/lib/nbd_client.py: malformed handshakes, every option, out-of-range and malformed
requests, 100+ pipelined requests with replies matched by cookie, clients that vanish with
replies unread or in the middle of a WRITE payload, DISC with writes in flight. After every
case a health probe (new connection, GO, READ compared with the backing file, daemon PID
alive) makes sure the server survived it, so a crash is pinned to the case that caused it.

Writes go only to the middle half of the export (the scratch area); the caller checks that
the first and last quarters of the backing file are unchanged afterwards.

Prints one line per case, PASS or FAIL with the reason, and exits 1 if any case failed.
Loopback and Unix sockets only.
"""

import argparse
import os
import random
import socket
import struct
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import nbd_client as nbd  # noqa: E402
from nbd_client import Closed, Connection  # noqa: E402

MIB = 1 << 20
MAX_PAYLOAD = 32 * MIB


class Failure(Exception):
    pass


def check(condition, message):
    if not condition:
        raise Failure(message)


def errname(e):
    names = {0: "OK", 1: "EPERM", 5: "EIO", 12: "ENOMEM", 22: "EINVAL", 28: "ENOSPC",
             75: "EOVERFLOW", 95: "ENOTSUP", 108: "ESHUTDOWN"}
    return f"{names.get(e, 'error')}({e})"


class Context:
    def __init__(self, args):
        self.socket_path = args.socket
        self.volume_path = args.volume
        self.log_path = args.log
        self.pid = args.pid
        self.size = os.path.getsize(args.volume)
        self.scratch_begin = self.size // 4
        self.scratch_end = 3 * self.size // 4
        self.scratch_next = self.scratch_begin
        self.rng = random.Random(args.seed)
        self.meta_context_id = None

    def connect(self, **kwargs):
        return Connection(unix_path=self.socket_path, **kwargs)

    def open(self, structured=True, meta=True):
        c = self.connect()
        c.connect(structured=structured, meta=meta)
        check(c.size == self.size, f"export size {c.size}, backing file {self.size}")
        return c

    def scratch(self, length):
        """A fresh, 1 MiB-aligned range of the scratch area, never handed out twice."""
        offset = self.scratch_next
        self.scratch_next += (length + MIB - 1) // MIB * MIB
        assert self.scratch_next <= self.scratch_end, "scratch area exhausted"
        return offset

    def file_bytes(self, offset, length):
        with open(self.volume_path, "rb") as f:
            f.seek(offset)
            return f.read(length)

    def log_count(self, needle):
        if not self.log_path:
            return 0
        with open(self.log_path, "r", errors="replace") as f:
            return sum(1 for line in f if needle in line)

    def wait_log_count(self, needle, at_least, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log_count(needle) >= at_least:
                return True
            time.sleep(0.02)
        return False

    def daemon_alive(self):
        if not self.pid:
            return True
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            return False
        return state not in ("Z", "X")

    def random_bytes(self, n):
        return self.rng.randbytes(n)


def expect_ok(reply, what):
    check(reply.error == 0, f"{what}: got {errname(reply.error)} {reply.messages}")


def expect_error(reply, allowed, what):
    wanted = " or ".join(errname(e) for e in allowed)
    check(reply.error in allowed, f"{what}: expected {wanted}, got {errname(reply.error)}")


def expect_closed(c, what, allow_bytes=False):
    closed, got = c.expect_closed(5.0)
    check(closed, f"{what}: server kept the connection open")
    if not allow_bytes:
        check(got == b"", f"{what}: server sent {len(got)} bytes before closing: {got[:40]!r}")
    return got


def read_matches_file(ctx, c, offset, length, flags=0):
    r = c.read(offset, length, flags)
    expect_ok(r, f"READ {offset}+{length}")
    check(r.data == ctx.file_bytes(offset, length), f"READ {offset}+{length} differs from the file")


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


# ---- handshake --------------------------------------------------------------------------

@case
def handshake_garbage_instead_of_client_flags(ctx):
    c = ctx.connect()
    c.read_greeting()
    check(c.server_flags & nbd.FLAG_FIXED_NEWSTYLE, "greeting without FIXED_NEWSTYLE")
    check(c.server_flags & ~3 == 0, f"greeting has unknown flags {c.server_flags:#x}")
    c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    expect_closed(c, "garbage client flags")


@case
def handshake_truncated(ctx):
    # Close at every early point: before reading the greeting, after it, mid-flags, after the
    # flags, mid-option-header, mid-option-data.
    cuts = [b"", None, b"\x00\x00", struct.pack(">I", 3), struct.pack(">QI", nbd.IHAVEOPT, 7),
            struct.pack(">QII", nbd.IHAVEOPT, nbd.OPT_GO, 100) + b"\x00" * 10]
    for cut in cuts:
        c = ctx.connect()
        if cut is not None:
            c.read_greeting()
            if cut and len(cut) > 4:
                c.send_client_flags()
            c.send(cut)
        c.close()


@case
def handshake_wrong_option_magic(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_GO, Connection.info_payload(), magic=0x1122334455667788)
    expect_closed(c, "option with a wrong magic")


@case
def handshake_unknown_client_flag_bits(ctx):
    for bits in (1 << 2, 1 << 31):
        c = ctx.connect()
        c.read_greeting()
        c.send_client_flags(nbd.FLAG_FIXED_NEWSTYLE | nbd.FLAG_NO_ZEROES | bits)
        expect_closed(c, f"client flag bit {bits:#x}")


@case
def option_unknown_then_go(ctx):
    c = ctx.connect()
    c.start()
    for option, data in ((0x1234, b""), (0x7FFFFFFF, b"x" * 100), (nbd.OPT_EXTENDED_HEADERS, b""),
                         (nbd.OPT_STARTTLS, b"")):
        c.send_option(option, data)
        replies = c.option_replies(option)
        check(len(replies) == 1, f"option {option:#x}: {len(replies)} replies")
        allowed = (nbd.REP_ERR_UNSUP, nbd.REP_ERR_POLICY) if option == nbd.OPT_STARTTLS else (
            nbd.REP_ERR_UNSUP,)
        check(replies[0][0] in allowed,
              f"option {option:#x}: reply {replies[0][0]:#x}, expected ERR_UNSUP (0x80000001)")
    c.structured_reply()
    c.go()
    read_matches_file(ctx, c, 0, 4096)
    c.disconnect()


@case
def option_absurd_length(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_GO, b"", length=0xFFFFFFF0)
    expect_closed(c, "GO claiming 4 GiB of data")


@case
def go_without_info_requests(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_GO, Connection.info_payload(b"", ()))
    replies = c.option_replies(nbd.OPT_GO)
    check(replies[-1][0] == nbd.REP_ACK, f"GO ended with {replies[-1][0]:#x}")
    types = [r for r, _ in replies]
    check(all(t == nbd.REP_INFO for t in types[:-1]), f"GO replies {types}")
    infos = Connection.parse_infos(replies)
    check(nbd.INFO_EXPORT in infos, "no INFO_EXPORT before the ACK")
    size, flags = struct.unpack(">QH", infos[nbd.INFO_EXPORT])
    check(size == ctx.size, f"INFO_EXPORT size {size}")
    check(flags & nbd.TX_HAS_FLAGS, "transmission flags without HAS_FLAGS")
    check(not flags & nbd.TX_SEND_DF, "DF advertised without structured replies")
    # No padding after the ACK: the very next bytes are a simple reply with the data.
    c.structured = False
    read_matches_file(ctx, c, 0, 4096)


@case
def info_and_go_agree(ctx):
    c = ctx.connect()
    c.start()
    c.structured_reply()
    wanted = (nbd.INFO_NAME, nbd.INFO_DESCRIPTION, nbd.INFO_BLOCK_SIZE, 0x7777)
    c.send_option(nbd.OPT_INFO, Connection.info_payload(b"", wanted))
    info_replies = c.option_replies(nbd.OPT_INFO)
    check(info_replies[-1][0] == nbd.REP_ACK, f"INFO ended with {info_replies[-1][0]:#x}")
    from_info = Connection.parse_infos(info_replies)
    # An unknown export is an error, and negotiation goes on.
    c.send_option(nbd.OPT_INFO, Connection.info_payload(b"no-such-export", ()))
    check(c.option_replies(nbd.OPT_INFO)[-1][0] == nbd.REP_ERR_UNKNOWN,
          "INFO for an unknown export is not ERR_UNKNOWN")
    c.send_option(nbd.OPT_GO, Connection.info_payload(b"", wanted))
    go_replies = c.option_replies(nbd.OPT_GO)
    check(go_replies[-1][0] == nbd.REP_ACK, f"GO ended with {go_replies[-1][0]:#x}")
    from_go = Connection.parse_infos(go_replies)
    check(from_info == from_go, f"INFO said {from_info}, GO said {from_go}")
    size, flags = struct.unpack(">QH", from_go[nbd.INFO_EXPORT])
    check(size == ctx.size, f"size {size}")
    for bit, name in ((nbd.TX_HAS_FLAGS, "HAS_FLAGS"), (nbd.TX_SEND_FLUSH, "FLUSH"),
                      (nbd.TX_SEND_FUA, "FUA"), (nbd.TX_SEND_TRIM, "TRIM"),
                      (nbd.TX_SEND_WRITE_ZEROES, "WRITE_ZEROES"), (nbd.TX_SEND_DF, "DF"),
                      (nbd.TX_CAN_MULTI_CONN, "MULTI_CONN"), (nbd.TX_SEND_CACHE, "CACHE"),
                      (nbd.TX_SEND_FAST_ZERO, "FAST_ZERO")):
        check(flags & bit, f"transmission flag {name} missing ({flags:#x})")
    check(not flags & nbd.TX_READ_ONLY, "export is read-only")
    check(nbd.INFO_BLOCK_SIZE in from_go, "no INFO_BLOCK_SIZE")
    sizes = struct.unpack(">III", from_go[nbd.INFO_BLOCK_SIZE])
    check(sizes == (512, 4096, MAX_PAYLOAD), f"block sizes {sizes}")
    c.structured = True
    c.size = size
    read_matches_file(ctx, c, 4096, 8192)
    c.disconnect()


def export_name(ctx, no_zeroes):
    c = ctx.connect()
    c.read_greeting()
    check(c.server_flags & nbd.FLAG_NO_ZEROES, "server does not offer NO_ZEROES")
    c.send_client_flags(nbd.FLAG_FIXED_NEWSTYLE | (nbd.FLAG_NO_ZEROES if no_zeroes else 0))
    c.send_option(nbd.OPT_EXPORT_NAME, b"")
    size, flags = struct.unpack(">QH", c.recv_exact(10))
    check(size == ctx.size, f"EXPORT_NAME size {size}")
    check(flags & nbd.TX_HAS_FLAGS, "no HAS_FLAGS")
    if not no_zeroes:
        pad = c.recv_exact(124)
        check(pad == bytes(124), "the 124 padding bytes are not zero")
    # The next bytes must be the reply to our READ, nothing else.
    read_matches_file(ctx, c, 0, 1024)
    c.disconnect()


@case
def export_name_with_no_zeroes(ctx):
    export_name(ctx, no_zeroes=True)


@case
def export_name_with_zeroes(ctx):
    export_name(ctx, no_zeroes=False)


@case
def export_name_unknown_drops(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_EXPORT_NAME, b"no-such-export")
    expect_closed(c, "EXPORT_NAME of an unknown export")


@case
def list_exports(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_LIST)
    replies = c.option_replies(nbd.OPT_LIST)
    check(replies[-1][0] == nbd.REP_ACK, f"LIST ended with {replies[-1][0]:#x}")
    names = []
    for rtype, data in replies[:-1]:
        check(rtype == nbd.REP_SERVER, f"LIST reply type {rtype:#x}")
        (n,) = struct.unpack(">I", data[:4])
        check(4 + n <= len(data), "REP_SERVER name length past the payload")
        names.append(data[4:4 + n])
    check(names == [b""], f"LIST names {names}")
    c.send_option(nbd.OPT_LIST, b"junk")
    check(c.option_replies(nbd.OPT_LIST)[-1][0] == nbd.REP_ERR_INVALID,
          "LIST with data is not ERR_INVALID")
    c.structured_reply()
    c.go()
    read_matches_file(ctx, c, 0, 512)
    c.disconnect()


@case
def abort(ctx):
    c = ctx.connect()
    c.start()
    c.send_option(nbd.OPT_ABORT)
    got = expect_closed(c, "ABORT", allow_bytes=True)
    if got:
        check(got == struct.pack(">QIII", nbd.OPT_REPLY_MAGIC, nbd.OPT_ABORT, nbd.REP_ACK, 0),
              f"ABORT answered with {got!r}")


@case
def meta_context_before_structured_reply(ctx):
    c = ctx.connect()
    c.start()
    replies = c.set_meta_context([b"base:allocation"])
    check(replies[-1][0] == nbd.REP_ERR_INVALID,
          f"SET_META_CONTEXT before STRUCTURED_REPLY: {replies[-1][0]:#x}, expected ERR_INVALID")
    c.structured_reply()
    # Unknown namespaces are ignored: nothing selected, just the ACK.
    replies = c.set_meta_context([b"nosuch:context"])
    check([r for r, _ in replies] == [nbd.REP_ACK], f"unknown namespace: {replies}")
    c.send_option(nbd.OPT_LIST_META_CONTEXT, struct.pack(">II", 0, 1) +
                  struct.pack(">I", 5) + b"base:")
    listed = c.option_replies(nbd.OPT_LIST_META_CONTEXT)
    check(any(r == nbd.REP_META_CONTEXT and d[4:] == b"base:allocation" for r, d in listed),
          f"LIST_META_CONTEXT base: did not list base:allocation: {listed}")
    replies = c.set_meta_context([b"base:allocation"])
    check(replies[-1][0] == nbd.REP_ACK and replies[0][0] == nbd.REP_META_CONTEXT,
          f"SET_META_CONTEXT base:allocation: {replies}")
    check(replies[0][1][4:] == b"base:allocation", f"context name {replies[0][1][4:]!r}")
    (context_id,) = struct.unpack(">I", replies[0][1][:4])
    c.go()
    r = c.command(nbd.CMD_BLOCK_STATUS, 0, MIB)
    expect_ok(r, "BLOCK_STATUS")
    check(r.extents and r.extents[0][0] == context_id,
          f"block status context {r.extents and r.extents[0][0]}, negotiated {context_id}")
    c.disconnect()


# ---- transmission -----------------------------------------------------------------------

@case
def read_out_of_range(ctx):
    c = ctx.open()
    expect_error(c.read(ctx.size - 512, 1024), (nbd.EINVAL,), "READ across the end")
    expect_error(c.read(ctx.size, 512), (nbd.EINVAL,), "READ at the end")
    expect_error(c.read(ctx.size + 8 * MIB, 4096), (nbd.EINVAL,), "READ past the end")
    read_matches_file(ctx, c, ctx.size - 4096, 4096)
    c.disconnect()


@case
def write_out_of_range(ctx):
    c = ctx.open()
    before = ctx.file_bytes(ctx.size - 4096, 4096)
    expect_error(c.write(ctx.size - 512, b"\xaa" * 4096), (nbd.ENOSPC,), "WRITE across the end")
    expect_error(c.write(ctx.size, b"\xbb" * 512), (nbd.ENOSPC,), "WRITE at the end")
    expect_error(c.command(nbd.CMD_WRITE_ZEROES, ctx.size - 512, 4096), (nbd.ENOSPC, nbd.EINVAL),
                 "WRITE_ZEROES across the end")
    expect_error(c.command(nbd.CMD_TRIM, ctx.size - 512, 4096), (nbd.EINVAL,),
                 "TRIM across the end")
    expect_error(c.command(nbd.CMD_BLOCK_STATUS, ctx.size - 512, 4096), (nbd.EINVAL,),
                 "BLOCK_STATUS across the end")
    # The in-range part is untouched, and the rejected payloads were consumed: this READ's
    # reply is in step.
    r = c.read(ctx.size - 4096, 4096)
    expect_ok(r, "READ of the last 4 KiB")
    check(r.data == before, "a rejected WRITE changed the in-range bytes")
    offset = ctx.scratch(4096)
    data = ctx.random_bytes(4096)
    expect_ok(c.write(offset, data), "WRITE after the rejected ones")
    r = c.read(offset, 4096)
    check(r.error == 0 and r.data == data, "WRITE after the rejected ones did not read back")
    c.disconnect()


@case
def offset_plus_length_wraps(ctx):
    c = ctx.open()
    top = 2**64
    expect_error(c.read(top - 512, 1024), (nbd.EINVAL,), "READ wrapping 2^64")
    expect_error(c.read(top - 512, 512), (nbd.EINVAL,), "READ at 2^64-512")
    expect_error(c.write(top - 4096, b"\xcc" * 8192), (nbd.ENOSPC, nbd.EINVAL), "WRITE wrapping")
    for command in (nbd.CMD_WRITE_ZEROES, nbd.CMD_TRIM, nbd.CMD_CACHE, nbd.CMD_BLOCK_STATUS):
        r = c.command(command, top - 512, 4096)
        check(r.error != 0, f"command {command} wrapping 2^64 succeeded")
    read_matches_file(ctx, c, 0, 4096)
    c.disconnect()


@case
def zero_length_requests(ctx):
    c = ctx.open()
    expect_ok(c.read(4096, 0), "zero-length READ")
    expect_ok(c.write(ctx.scratch_begin, b""), "zero-length WRITE")
    for command, name in ((nbd.CMD_TRIM, "TRIM"), (nbd.CMD_WRITE_ZEROES, "WRITE_ZEROES"),
                          (nbd.CMD_CACHE, "CACHE")):
        expect_ok(c.command(command, ctx.scratch_begin, 0), f"zero-length {name}")
    read_matches_file(ctx, c, 0, 512)
    c.disconnect()


def oversized(ctx, command):
    """A READ or WRITE one 512-byte block over the 32 MiB maximum payload: an error reply, with
    the WRITE payload drained and the connection kept in step (the spec allows a server to
    drop such a client; this one does not, and a client that drops would lose its other
    requests in flight)."""
    c = ctx.open()
    length = MAX_PAYLOAD + 512
    try:
        if command == nbd.CMD_WRITE:
            r = c.write(ctx.scratch(length), b"\xdd" * length)
        else:
            r = c.read(0, length)
        check(r.error != 0, f"{length}-byte request succeeded beyond the advertised maximum")
        outcome = f"error {errname(r.error)}"
        read_matches_file(ctx, c, 0, 4096)   # still in step
        c.disconnect()
    except (Closed, BrokenPipeError, ConnectionResetError):
        check(False, f"{length}-byte request: the connection was dropped instead of an error reply")
    return outcome


@case
def oversized_write(ctx):
    return oversized(ctx, nbd.CMD_WRITE)


@case
def oversized_read(ctx):
    return oversized(ctx, nbd.CMD_READ)


@case
def unknown_command(ctx):
    c = ctx.open()
    for command in (8, 42, 0xFFFF):
        expect_error(c.command(command, 0, 512), (nbd.EINVAL,), f"command {command}")
    read_matches_file(ctx, c, 0, 512)
    c.disconnect()


@case
def unknown_flags(ctx):
    c = ctx.open()
    expect_error(c.read(0, 512, flags=1 << 7), (nbd.EINVAL,), "READ with flag bit 7")
    expect_error(c.read(0, 512, flags=1 << 15), (nbd.EINVAL,), "READ with flag bit 15")
    offset = ctx.scratch(4096)
    before = ctx.file_bytes(offset, 4096)
    expect_error(c.write(offset, b"\xee" * 4096, flags=nbd.CMD_FLAG_NO_HOLE), (nbd.EINVAL,),
                 "WRITE with NO_HOLE (a WRITE_ZEROES flag)")
    expect_error(c.command(nbd.CMD_FLUSH, flags=1 << 9), (nbd.EINVAL,), "FLUSH with flag bit 9")
    r = c.read(offset, 4096)
    expect_ok(r, "READ after the rejected WRITE")
    check(r.data == before, "a WRITE rejected for its flags changed the data")
    c.disconnect()


@case
def fua_and_df_on_read(ctx):
    c = ctx.open()
    read_matches_file(ctx, c, 8192, 16384, flags=nbd.CMD_FLAG_FUA)
    read_matches_file(ctx, c, 8192, 16384, flags=nbd.CMD_FLAG_DF)
    c.disconnect()


@case
def block_status_without_meta_context(ctx):
    for structured in (True, False):
        c = ctx.open(structured=structured, meta=False)
        r = c.command(nbd.CMD_BLOCK_STATUS, 0, 4096)
        expect_error(r, (nbd.EINVAL,), f"BLOCK_STATUS without a meta context (SR={structured})")
        read_matches_file(ctx, c, 0, 512)
        c.disconnect()


@case
def other_commands(ctx):
    c = ctx.open()
    offset = ctx.scratch(MIB)
    data = ctx.random_bytes(MIB)
    expect_ok(c.write(offset, data, flags=nbd.CMD_FLAG_FUA), "WRITE with FUA")
    expect_ok(c.flush(), "FLUSH")
    expect_ok(c.command(nbd.CMD_CACHE, offset, MIB), "CACHE")
    expect_ok(c.command(nbd.CMD_WRITE_ZEROES, offset, 65536, flags=nbd.CMD_FLAG_NO_HOLE),
              "WRITE_ZEROES with NO_HOLE")
    expect_ok(c.command(nbd.CMD_WRITE_ZEROES, offset + 65536, 65536, flags=nbd.CMD_FLAG_FUA),
              "WRITE_ZEROES with FUA")
    expect_ok(c.command(nbd.CMD_TRIM, offset + 131072, 65536), "TRIM")
    check(c.tx_flags & nbd.TX_SEND_FAST_ZERO, "FAST_ZERO not advertised")
    r = c.command(nbd.CMD_WRITE_ZEROES, offset + 196608, 65536, flags=nbd.CMD_FLAG_FAST_ZERO)
    expect_error(r, (0, nbd.ENOTSUP), "WRITE_ZEROES with FAST_ZERO")
    fast_zeroed = r.error == 0
    r = c.read(offset, MIB)
    expect_ok(r, "READ back")
    check(r.data[:131072] == bytes(131072), "WRITE_ZEROES range does not read as zeroes")
    tail = 262144 if fast_zeroed else 196608
    check(r.data[tail:] == data[tail:], "data next to the zeroed ranges changed")
    if fast_zeroed:
        check(r.data[196608:262144] == bytes(65536), "FAST_ZERO succeeded but left data")
    else:
        check(r.data[196608:262144] == data[196608:262144], "failed FAST_ZERO changed data")
    r = c.command(nbd.CMD_BLOCK_STATUS, offset, MIB)
    expect_ok(r, "BLOCK_STATUS")
    check(len(r.extents) == 1, f"{len(r.extents)} block status chunks for one context")
    total = sum(length for length, _ in r.extents[0][1])
    check(0 < total <= MIB, f"block status extents cover {total} of {MIB} bytes")
    check(all(length > 0 and flags & ~3 == 0 for length, flags in r.extents[0][1]),
          f"bad extents {r.extents[0][1]}")
    r = c.command(nbd.CMD_BLOCK_STATUS, offset, MIB, flags=nbd.CMD_FLAG_REQ_ONE)
    expect_ok(r, "BLOCK_STATUS with REQ_ONE")
    check(len(r.extents) == 1 and len(r.extents[0][1]) == 1,
          f"REQ_ONE answered with {r.extents}")
    c.disconnect()


@case
def pipelined_requests_matched_by_cookie(ctx):
    c = ctx.open()
    base = ctx.scratch(MIB)
    pattern = ctx.random_bytes(MIB)
    expect_ok(c.write(base, pattern), "setup WRITE")
    targets = ctx.scratch(MIB)
    rng = random.Random(7)
    cookies = set()
    while len(cookies) < 200:
        cookies.add(rng.getrandbits(64))
    cookies = list(cookies)
    cookies[0], cookies[1] = 0xFFFFFFFFFFFFFFFF, 0x8000000000000000
    requests = []   # (cookie, command, offset, length, payload)
    written = {}
    for i, cookie in enumerate(cookies):
        kind = i % 5
        if kind in (0, 1):
            length = rng.choice((512, 4096, 65536, 262144, MIB))
            offset = base + rng.randrange(0, MIB - length + 1, 512)
            requests.append((cookie, nbd.CMD_READ, offset, length, b""))
        elif kind in (2, 3):
            slot = len(written)
            payload = bytes([slot % 251 + 1]) * 4096
            written[slot] = payload
            requests.append((cookie, nbd.CMD_WRITE, targets + slot * 4096, 4096, payload))
        elif i % 10 == 4:
            requests.append((cookie, nbd.CMD_FLUSH, 0, 0, b""))
        else:
            requests.append((cookie, nbd.CMD_BLOCK_STATUS, base, MIB, b""))
    by_cookie = {r[0]: r for r in requests}
    send_error = []

    def sender():
        try:
            for cookie, command, offset, length, payload in requests:
                c.send_request(command, offset, length, payload=payload, cookie=cookie)
        except Exception as e:  # reported by the main thread
            send_error.append(e)

    thread = threading.Thread(target=sender)
    thread.start()
    order = []
    try:
        for _ in requests:
            r = c.read_reply()
            order.append(r.cookie)
            cookie, command, offset, length, _ = by_cookie[r.cookie]
            check(r.command == command, f"cookie {cookie:#x}: reply for the wrong command")
            expect_ok(r, f"pipelined command {command} at {offset}+{length}")
            if command == nbd.CMD_READ:
                check(r.data == pattern[offset - base:offset - base + length],
                      f"pipelined READ {offset}+{length} returned wrong data")
    finally:
        thread.join(30)
    check(not send_error, f"sending failed: {send_error}")
    check(sorted(order) == sorted(cookies), "replies do not match the cookies sent one to one")
    check(not c.pending, f"{len(c.pending)} requests never answered")
    r = c.read(targets, len(written) * 4096)
    expect_ok(r, "READ of the pipelined writes")
    check(r.data == b"".join(written[i] for i in range(len(written))),
          "pipelined writes did not all land")
    c.disconnect()
    in_order = order == [r[0] for r in requests]
    return f"{len(requests)} requests, replies {'in' if in_order else 'out of'} order"


@case
def read_flood_then_close_without_reading(ctx):
    # 4 connections x 32 READs of 32 MiB: 4 GiB of replies nobody reads, far more than the
    # server's buffer budget. Each client closes right after sending.
    conns = []
    for _ in range(4):
        c = ctx.open()
        for i in range(32):
            c.send_request(nbd.CMD_READ, (i % 3) * MAX_PAYLOAD, MAX_PAYLOAD)
        conns.append(c)
    for c in conns:
        c.close()
    # Every buffer must come back: a full-size READ on a new connection completes.
    c = ctx.open()
    c.sock.settimeout(30)
    r = c.read(0, MAX_PAYLOAD)
    expect_ok(r, "32 MiB READ after the flood")
    check(r.data == ctx.file_bytes(0, MAX_PAYLOAD), "32 MiB READ after the flood differs")
    c.disconnect()


@case
def reply_cut_short_by_a_full_socket_then_more_requests(ctx):
    # The reply to a connection's only request goes out from its completion; one bigger than
    # the socket buffer is cut short there, and the writer sends the rest. Requests that arrive
    # meanwhile must have their replies queued behind it, never cut into it.
    offset = ctx.scratch(MIB)
    length = 16 * MIB
    for structured in (False, True):
        c = ctx.open(structured=structured, meta=structured)
        c.sock.settimeout(30)
        read_cookie = c.send_request(nbd.CMD_READ, 0, length)
        # Its reply has begun (the rest waits on the full socket): now send more.
        check(c.sock.recv(1, socket.MSG_PEEK) != b"", "no reply to a lone 16 MiB READ")
        payload = ctx.random_bytes(4096)
        write_cookie = c.send_request(nbd.CMD_WRITE, offset, len(payload), payload=payload)
        flush_cookie = c.send_request(nbd.CMD_FLUSH)
        replies = [c.read_reply() for _ in range(3)]
        check(replies[0].cookie == read_cookie, "a later reply went out before the READ's")
        expect_ok(replies[0], "16 MiB READ")
        check(replies[0].data == ctx.file_bytes(0, length), "16 MiB READ differs from the file")
        check({r.cookie for r in replies[1:]} == {write_cookie, flush_cookie},
              "replies do not match the WRITE and FLUSH sent")
        for r in replies[1:]:
            expect_ok(r, "WRITE or FLUSH sent behind the READ's reply")
        read_matches_file(ctx, c, offset, len(payload))
        check(ctx.file_bytes(offset, len(payload)) == payload, "the WRITE did not land")
        c.disconnect()


@case
def close_in_the_middle_of_a_write_payload(ctx):
    offset = ctx.scratch(MIB)
    c = ctx.open()
    original = ctx.random_bytes(MIB)
    expect_ok(c.write(offset, original, flags=nbd.CMD_FLAG_FUA), "setup WRITE")
    c.disconnect()
    cut_before = ctx.log_count("WRITE payload cut short")
    for sent in (MIB // 2, 0, MIB - 1):
        c = ctx.open()
        c.send_request(nbd.CMD_WRITE, offset, MIB, payload=b"\x5a" * sent)
        c.close()
    if ctx.log_path:
        check(ctx.wait_log_count("WRITE payload cut short", cut_before + 3),
              "the daemon never noticed the three cut-short WRITEs")
    c = ctx.open()
    r = c.read(offset, MIB)
    expect_ok(r, "READ after the cut-short WRITEs")
    check(r.data == original, "part of a WRITE whose payload never fully arrived was written")
    c.disconnect()


@case
def disc_after_writes_in_flight(ctx):
    c = ctx.open()
    count, length = 32, 256 * 1024
    offset = ctx.scratch(count * length)
    payloads = [ctx.random_bytes(length) for _ in range(count)]
    for i, payload in enumerate(payloads):
        c.send_request(nbd.CMD_WRITE, offset + i * length, length, payload=payload)
    c.disconnect()
    for _ in range(count):
        expect_ok(c.read_reply(), "WRITE before DISC")
    check(not c.pending, "some writes before DISC got no reply")
    expect_closed(c, "after DISC")
    c = ctx.open()
    r = c.read(offset, count * length)
    expect_ok(r, "READ of the writes sent before DISC")
    check(r.data == b"".join(payloads), "writes acknowledged before DISC did not all land")
    c.disconnect()


@case
def structured_read_errors_are_chunks(ctx):
    # With structured replies negotiated the spec forbids simple replies to READ, errors
    # included (qemu treats one as a protocol error and drops the connection).
    c = ctx.open()
    offenders = []
    for what, offset, length, flags in (("out of range", ctx.size, 512, 0),
                                        ("unknown flag", 0, 512, 1 << 7),
                                        ("zero length", 0, 0, 0)):
        r = c.read(offset, length, flags)
        if r.simple:
            offenders.append(f"{what} READ got a simple reply ({errname(r.error)})")
    c.disconnect()
    check(not offenders, "; ".join(offenders))


def health_probe(ctx):
    """A new connection can negotiate and read what the backing file holds."""
    if not ctx.daemon_alive():
        return "the daemon is no longer running"
    try:
        c = ctx.open()
        r = c.read(0, 4096)
        c.disconnect()
        c.close()
    except Exception as e:
        return f"health probe failed: {type(e).__name__}: {e}"
    if r.error != 0 or r.data != ctx.file_bytes(0, 4096):
        return "health probe READ returned wrong data"
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the daemon's Unix socket")
    parser.add_argument("--volume", required=True, help="the backing file (read only)")
    parser.add_argument("--log", help="the daemon's log, to wait for what it noticed")
    parser.add_argument("--pid", type=int, help="the daemon's PID, to check it is alive")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", help="run only cases whose name contains this")
    args = parser.parse_args()
    ctx = Context(args)
    failures = 0
    ran = 0
    for fn in CASES:
        name = fn.__name__
        if args.only and args.only not in name:
            continue
        ran += 1
        started = time.monotonic()
        try:
            note = fn(ctx)
            result, detail = "PASS", note or ""
        except Failure as e:
            result, detail = "FAIL", str(e)
        except Exception as e:
            result = "FAIL"
            line = traceback.extract_tb(e.__traceback__)[-1].lineno
            detail = f"{type(e).__name__}: {e} (nbd_torture/nbd_client line {line})"
        problem = health_probe(ctx)
        if problem:
            result = "FAIL"
            detail = (detail + "; " if detail else "") + "server unhealthy afterwards: " + problem
        failures += result == "FAIL"
        elapsed = time.monotonic() - started
        print(f"{result} {name} ({elapsed:.2f}s){': ' + detail if detail else ''}", flush=True)
    if failures:
        print(f"FAIL: {failures} of {ran} cases failed", flush=True)
    else:
        print(f"PASS: all {ran} cases", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
