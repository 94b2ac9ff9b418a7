"""nbd_client: a small, deliberately naive NBD client over raw sockets (Python stdlib only).

Used by the integration tests that need to put exact bytes on the wire or see exact replies
(tests/integration/nbd_torture.py, faults_test.sh). It trusts nothing the server sends: every
read has a timeout, every magic is checked, and replies are matched to requests by cookie, so
out-of-order replies are fine and a reply to an unknown cookie is an error.

Nothing here talks to anything but the Unix socket or loopback port it is given.
"""

import socket
import struct
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2

OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8
OPT_LIST_META_CONTEXT = 9
OPT_SET_META_CONTEXT = 10
OPT_EXTENDED_HEADERS = 11

REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_META_CONTEXT = 4
REP_ERR_UNSUP = 0x80000001
REP_ERR_POLICY = 0x80000002
REP_ERR_INVALID = 0x80000003
REP_ERR_UNKNOWN = 0x80000006

INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

TX_HAS_FLAGS = 1 << 0
TX_READ_ONLY = 1 << 1
TX_SEND_FLUSH = 1 << 2
TX_SEND_FUA = 1 << 3
TX_SEND_TRIM = 1 << 5
TX_SEND_WRITE_ZEROES = 1 << 6
TX_SEND_DF = 1 << 7
TX_CAN_MULTI_CONN = 1 << 8
TX_SEND_CACHE = 1 << 10
TX_SEND_FAST_ZERO = 1 << 11

CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7

CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_REQ_ONE = 1 << 3
CMD_FLAG_FAST_ZERO = 1 << 4

CHUNK_FLAG_DONE = 1
CHUNK_NONE = 0
CHUNK_OFFSET_DATA = 1
CHUNK_OFFSET_HOLE = 2
CHUNK_BLOCK_STATUS = 5
CHUNK_ERROR = 0x8001
CHUNK_ERROR_OFFSET = 0x8002

EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ENOTSUP = 95
ESHUTDOWN = 108


class ProtocolError(Exception):
    """The server sent something the protocol does not allow."""


class Closed(Exception):
    """The server closed the connection (EOF or reset)."""


class Reply:
    """One complete reply: error 0 on success; data for READ; extents for BLOCK_STATUS."""

    def __init__(self, cookie, command):
        self.cookie = cookie
        self.command = command
        self.error = 0
        self.simple = False          # True when the server used a simple reply.
        self.data = b""
        self.chunks = []             # (type, flags, payload) of every structured chunk.
        self.extents = []            # (context id, [(length, flags), ...]) per BLOCK_STATUS chunk.
        self.messages = []           # Error chunk messages.
        self.covered = 0             # READ bytes covered by data and hole chunks.

    def __repr__(self):
        return (f"Reply(cookie={self.cookie:#x}, error={self.error}, simple={self.simple}, "
                f"data={len(self.data)} bytes, chunks={[c[0] for c in self.chunks]})")


class Connection:
    """One socket to the server. Handshake helpers, then requests and cookie-matched replies."""

    def __init__(self, unix_path=None, tcp=None, timeout=10.0):
        if unix_path is not None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address = unix_path
        else:
            host, port = tcp
            assert host in ("127.0.0.1", "localhost", "::1"), "loopback only"
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            address = (host, port)
        self.sock.settimeout(timeout)
        self.sock.connect(address)
        self.structured = False
        self.size = None
        self.tx_flags = None
        self.pending = {}            # cookie -> (command, offset, length)
        self.partial = {}            # cookie -> Reply under construction (structured)
        self.next_cookie = 1
        self.server_flags = None

    # ---- raw bytes -------------------------------------------------------------------
    def send(self, data):
        self.sock.sendall(data)

    def recv_exact(self, n):
        chunks = []
        left = n
        while left > 0:
            try:
                b = self.sock.recv(min(left, 1 << 20))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(f"connection reset while expecting {n} bytes: {e}") from e
            if not b:
                raise Closed(f"EOF with {left} of {n} expected bytes missing")
            chunks.append(b)
            left -= len(b)
        return b"".join(chunks)

    def expect_closed(self, timeout=5.0):
        """True if the server closes the connection within `timeout` (any bytes it sends before
        closing are returned as the second element)."""
        self.sock.settimeout(timeout)
        got = b""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                b = self.sock.recv(65536)
                if not b:
                    return True, got
                got += b
        except (ConnectionResetError, BrokenPipeError):
            return True, got
        except socket.timeout:
            return False, got
        return False, got

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- handshake -------------------------------------------------------------------
    def read_greeting(self):
        magic, opt_magic, flags = struct.unpack(">QQH", self.recv_exact(18))
        if magic != NBDMAGIC or opt_magic != IHAVEOPT:
            raise ProtocolError(f"bad greeting {magic:#x} {opt_magic:#x}")
        self.server_flags = flags
        return flags

    def send_client_flags(self, flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
        self.send(struct.pack(">I", flags))

    def send_option(self, option, data=b"", magic=IHAVEOPT, length=None):
        self.send(struct.pack(">QII", magic, option, len(data) if length is None else length) +
                  data)

    def read_option_reply(self):
        magic, option, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        if magic != OPT_REPLY_MAGIC:
            raise ProtocolError(f"bad option reply magic {magic:#x}")
        if length > 16 << 20:
            raise ProtocolError(f"option reply of {length} bytes")
        return option, rtype, self.recv_exact(length)

    def option_replies(self, option):
        """Reads replies to `option` up to and including the final one (ACK or error)."""
        replies = []
        while True:
            opt, rtype, data = self.read_option_reply()
            if opt != option:
                raise ProtocolError(f"reply for option {opt} while waiting for {option}")
            replies.append((rtype, data))
            if rtype == REP_ACK or rtype & 0x80000000:
                return replies

    def start(self, flags=FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES):
        self.read_greeting()
        self.send_client_flags(flags)

    @staticmethod
    def info_payload(name=b"", infos=()):
        return (struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos)) +
                b"".join(struct.pack(">H", i) for i in infos))

    @staticmethod
    def parse_infos(replies):
        """{info type: payload} from REP_INFO replies; raises on duplicates."""
        infos = {}
        for rtype, data in replies:
            if rtype != REP_INFO:
                continue
            (itype,) = struct.unpack(">H", data[:2])
            if itype in infos:
                raise ProtocolError(f"info {itype} sent twice")
            infos[itype] = data[2:]
        return infos

    def structured_reply(self):
        self.send_option(OPT_STRUCTURED_REPLY)
        replies = self.option_replies(OPT_STRUCTURED_REPLY)
        if replies[-1][0] != REP_ACK:
            raise ProtocolError(f"STRUCTURED_REPLY refused: {replies[-1][0]:#x}")
        self.structured = True

    def set_meta_context(self, queries, name=b""):
        data = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q)) + q
        self.send_option(OPT_SET_META_CONTEXT, data)
        return self.option_replies(OPT_SET_META_CONTEXT)

    def go(self, name=b"", infos=(INFO_BLOCK_SIZE,)):
        """GO; on success enters transmission and returns the info dict."""
        self.send_option(OPT_GO, self.info_payload(name, infos))
        replies = self.option_replies(OPT_GO)
        if replies[-1][0] != REP_ACK:
            raise ProtocolError(f"GO refused with {replies[-1][0]:#x}: {replies[-1][1]!r}")
        infos = self.parse_infos(replies)
        if INFO_EXPORT not in infos:
            raise ProtocolError("GO acknowledged without INFO_EXPORT")
        self.size, self.tx_flags = struct.unpack(">QH", infos[INFO_EXPORT])
        return infos

    def connect(self, structured=True, meta=True, name=b""):
        """The usual handshake: flags, [STRUCTURED_REPLY, SET_META_CONTEXT], GO."""
        self.start()
        if structured:
            self.structured_reply()
            if meta:
                replies = self.set_meta_context([b"base:allocation"])
                if not any(r == REP_META_CONTEXT for r, _ in replies):
                    raise ProtocolError("base:allocation not selected")
        return self.go(name)

    # ---- transmission ----------------------------------------------------------------
    def take_cookie(self):
        cookie = self.next_cookie
        self.next_cookie += 1
        return cookie

    def send_request(self, command, offset=0, length=0, flags=0, payload=b"", cookie=None,
                     send_payload=True):
        if cookie is None:
            cookie = self.take_cookie()
        if cookie in self.pending:
            raise ValueError(f"cookie {cookie:#x} already in flight")
        if command != CMD_DISC:
            self.pending[cookie] = (command, offset, length)
        header = struct.pack(">IHHQQI", REQUEST_MAGIC, flags, command, cookie,
                             offset & (2**64 - 1), length)
        self.send(header + (payload if send_payload else b""))
        return cookie

    def read_reply(self):
        """Reads until one request's reply is complete; returns it."""
        while True:
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            if magic == SIMPLE_REPLY_MAGIC:
                error, cookie = struct.unpack(">IQ", self.recv_exact(12))
                if cookie not in self.pending:
                    raise ProtocolError(f"simple reply for unknown cookie {cookie:#x}")
                command, _, length = self.pending.pop(cookie)
                reply = Reply(cookie, command)
                reply.simple = True
                reply.error = error
                if command == CMD_READ and error == 0:
                    reply.data = self.recv_exact(length)
                return reply
            if magic != STRUCTURED_REPLY_MAGIC:
                raise ProtocolError(f"bad reply magic {magic:#x}")
            if not self.structured:
                raise ProtocolError("structured reply chunk without STRUCTURED_REPLY")
            flags, ctype, cookie, length = struct.unpack(">HHQI", self.recv_exact(16))
            if cookie not in self.pending:
                raise ProtocolError(f"chunk for unknown cookie {cookie:#x}")
            payload = self.recv_exact(length)
            command, req_offset, req_length = self.pending[cookie]
            reply = self.partial.setdefault(cookie, Reply(cookie, command))
            if command == CMD_READ and not reply.chunks:
                reply.data = bytearray(req_length)
            reply.chunks.append((ctype, flags, payload))
            self._apply_chunk(reply, ctype, payload, req_offset, req_length)
            if flags & CHUNK_FLAG_DONE:
                del self.partial[cookie]
                del self.pending[cookie]
                reply.data = bytes(reply.data)
                if command == CMD_READ and reply.error == 0 and reply.covered != req_length:
                    raise ProtocolError(f"READ of {req_length} bytes answered with "
                                        f"{reply.covered} bytes of chunks")
                return reply

    @staticmethod
    def _apply_chunk(reply, ctype, payload, req_offset, req_length):
        if ctype == CHUNK_NONE:
            if payload:
                raise ProtocolError("NONE chunk with payload")
        elif ctype in (CHUNK_OFFSET_DATA, CHUNK_OFFSET_HOLE):
            if reply.command != CMD_READ:
                raise ProtocolError(f"chunk type {ctype} in reply to command {reply.command}")
            (offset,) = struct.unpack(">Q", payload[:8])
            if ctype == CHUNK_OFFSET_DATA:
                data = payload[8:]
            else:
                (hole_length,) = struct.unpack(">I", payload[8:12])
                data = bytes(hole_length)
            start = offset - req_offset
            if start < 0 or start + len(data) > req_length or not data:
                raise ProtocolError(f"read chunk {offset}+{len(data)} outside the request "
                                    f"{req_offset}+{req_length}")
            reply.data[start:start + len(data)] = data
            reply.covered += len(data)
        elif ctype == CHUNK_BLOCK_STATUS:
            if reply.command != CMD_BLOCK_STATUS:
                raise ProtocolError(f"block status chunk in reply to command {reply.command}")
            (context,) = struct.unpack(">I", payload[:4])
            extents = [struct.unpack(">II", payload[i:i + 8]) for i in range(4, len(payload), 8)]
            reply.extents.append((context, extents))
        elif ctype in (CHUNK_ERROR, CHUNK_ERROR_OFFSET):
            error, msg_len = struct.unpack(">IH", payload[:6])
            reply.error = error
            reply.messages.append(payload[6:6 + msg_len].decode("utf-8", "replace"))
            if error == 0:
                raise ProtocolError("error chunk with error 0")
        else:
            raise ProtocolError(f"unknown chunk type {ctype:#x}")

    def command(self, command, offset=0, length=0, flags=0, payload=b""):
        """Sends one request and waits for its reply (no other request may be in flight)."""
        self.send_request(command, offset, length, flags, payload)
        return self.read_reply()

    def read(self, offset, length, flags=0):
        return self.command(CMD_READ, offset, length, flags)

    def write(self, offset, data, flags=0):
        return self.command(CMD_WRITE, offset, len(data), flags, data)

    def flush(self):
        return self.command(CMD_FLUSH)

    def disconnect(self):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, CMD_DISC, 0, 0, 0))
