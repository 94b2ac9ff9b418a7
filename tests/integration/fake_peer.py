#!/usr/bin/env python3
"""fake_peer: a misbehaving nbdmirror peer that speaks the real protocol, for
mirror_bad_peer_test.sh.

It frames messages exactly as transport/frame.h says (20-byte big-endian header: magic "NBMR",
type, reserved, message length, payload length, CRC32C over the header with the CRC field
zeroed, the message and the payload), authenticates as transport/peer_auth.h says
(HMAC-SHA256 over label, a zero byte, then two nonces), and uses protobuf classes generated
from transport/peer.proto at test time (--pb-dir, made by `protoc --python_out`). Then it does
one thing wrong, chosen by CASE, and reports what the real daemon did.

    fake_peer.py --pb-dir DIR selftest
    fake_peer.py --pb-dir DIR --secret-file S --connect PORT [--uuid U --size N ...] CASE
    fake_peer.py --pb-dir DIR --secret-file S --listen PORT split-brain-standby

Cases against a standby (dial it as the primary would):
    good-write          the positive control: a correct handshake, one Write (--data FILE at
                        --offset) and a Flush; both must be acknowledged with error 0
    wrong-secret        authenticate with a wrong secret: must be refused
    garbage             answer the challenge with random bytes: the link must drop
    oversized-handshake answer the challenge with a header claiming a 65537-byte message
    wrong-node          Hello from a node that is not the configured peer: Refuse
    not-primary         Hello with role SECONDARY: Refuse
    wrong-size          Hello with another volume size: Refuse
    wrong-uuid          Hello with another volume identity: Refuse
  and after a correct handshake (the standby sends Ready):
    bad-crc             a Write whose CRC32C is off by one bit
    oversized           a header claiming a 65537-byte message
    payload-on-flush    a Flush frame carrying a 16-byte payload (CRC correct)
    unknown-type        a frame of type 99 (CRC correct)
    past-end            a Write of 8 KiB starting 4 KiB before the end of the volume
    length-mismatch     a Write declaring 4096 bytes that carries 8192
    empty-write         a durable Write of 0 bytes at --offset (no payload)
    empty-zero          a durable Zero of 0 bytes at --offset
  For all of these the daemon must refuse or drop the link without acknowledging anything.
Against a primary:
    hello-to-primary    dial the primary's --listen port, authenticate, Hello as --node with
                        --role (primary or secondary): the primary must refuse
    split-brain-standby listen on --listen PORT as the primary's peer, authenticate, answer the
                        primary's Hello with a Hello whose role is PRIMARY: the primary must
                        send Refuse (split brain) and close

Output: "RESULT ..." lines; exit 0 when the daemon did what it must, 1 when it did not (say,
acknowledged a corrupt write), 2 when the test itself could not run (no connection).
Loopback only.
"""

import argparse
import hashlib
import hmac
import os
import socket
import struct
import sys

MAGIC = 0x4E424D52
HEADER = struct.Struct(">IHHIII")  # magic, type, reserved, message_bytes, payload_bytes, crc
assert HEADER.size == 20
MAX_MESSAGE_BYTES = 64 * 1024

AUTH_CHALLENGE, AUTH_RESPONSE, HELLO, SYNC_PLAN, READY, REFUSE, BITMAP_RUNS = 1, 2, 3, 4, 5, 6, 7
WRITE, ZERO, FLUSH, ACK, RESYNC_DONE, HEARTBEAT = 10, 11, 12, 13, 14, 20
NAMES = {1: "AuthChallenge", 2: "AuthResponse", 3: "Hello", 4: "SyncPlan", 5: "Ready",
         6: "Refuse", 7: "BitmapRuns", 10: "Write", 11: "Zero", 12: "Flush", 13: "Ack", 14: "ResyncDone",
         20: "Heartbeat"}
PROTOCOL_VERSION = 2
NONCE_BYTES = 32

pb = None  # peer_pb2, imported from --pb-dir


# ---- CRC32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven -----------------------
def _make_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


CRC_TABLE = _make_table()


def crc32c(data, crc=0):
    """Extends `crc` (0 to start) over `data`; chaining equals one call over the concatenation."""
    crc ^= 0xFFFFFFFF
    table = CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# ---- frames ------------------------------------------------------------------------------------
def frame(ftype, message=b"", payload=b"", corrupt_crc=False, message_bytes=None,
          payload_bytes=None):
    """A frame as bytes. message_bytes/payload_bytes override the header's lengths (the CRC is
    then computed over that header, as a sender that lies would)."""
    mlen = len(message) if message_bytes is None else message_bytes
    plen = len(payload) if payload_bytes is None else payload_bytes
    crc = crc32c(HEADER.pack(MAGIC, ftype, 0, mlen, plen, 0))
    crc = crc32c(message, crc)
    crc = crc32c(payload, crc)
    if corrupt_crc:
        crc ^= 1
    return HEADER.pack(MAGIC, ftype, 0, mlen, plen, crc) + message + payload


class Closed(Exception):
    pass


class Link:
    def __init__(self, sock, timeout):
        self.sock = sock
        self.sock.settimeout(timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data):
        self.sock.sendall(data)

    def send_msg(self, ftype, message, payload=b""):
        self.send(frame(ftype, message.SerializeToString(), payload))

    def recv_exact(self, n):
        out = bytearray()
        while len(out) < n:
            try:
                b = self.sock.recv(n - len(out))
            except (ConnectionResetError, BrokenPipeError) as e:
                raise Closed(f"reset: {e}") from e
            if not b:
                raise Closed("EOF")
            out += b
        return bytes(out)

    def read_frame(self):
        """(type, message bytes, payload bytes), all checked like the daemon checks them."""
        magic, ftype, reserved, mlen, plen, crc = HEADER.unpack(self.recv_exact(HEADER.size))
        if magic != MAGIC or reserved != 0 or ftype not in NAMES:
            raise ValueError(f"bad frame header from the daemon: {magic:#x} {ftype} {reserved}")
        if mlen > MAX_MESSAGE_BYTES or (plen and ftype != WRITE):
            raise ValueError(f"bad frame lengths from the daemon: {mlen} {plen}")
        message = self.recv_exact(mlen)
        payload = self.recv_exact(plen)
        if frame(ftype, message, payload)[16:20] != struct.pack(">I", crc):
            raise ValueError(f"{NAMES[ftype]} frame from the daemon failed its CRC32C check")
        return ftype, message, payload

    def read_skipping_heartbeats(self):
        while True:
            ftype, message, payload = self.read_frame()
            if ftype != HEARTBEAT:
                return ftype, message, payload

    def expect(self, ftype, cls):
        got, message, _ = self.read_skipping_heartbeats()
        if got == REFUSE and ftype != REFUSE:
            refuse = pb.Refuse()
            refuse.ParseFromString(message)
            raise Refused(refuse.reason)
        if got != ftype:
            raise ValueError(f"expected {NAMES[ftype]}, got {NAMES[got]}")
        out = cls()
        out.ParseFromString(message)
        return out

    def wait_closed(self, timeout):
        """Reads until the daemon closes the link. Returns the frame types it sent before
        closing (heartbeats left out), or None if it kept the link open for `timeout`."""
        self.sock.settimeout(timeout)
        seen = []
        try:
            while True:
                ftype, message, _ = self.read_frame()
                if ftype == HEARTBEAT:
                    continue
                if ftype == ACK:
                    ack = pb.Ack()
                    ack.ParseFromString(message)
                    seen.append(f"Ack(seq={ack.seq}, error={ack.error})")
                elif ftype == REFUSE:
                    refuse = pb.Refuse()
                    refuse.ParseFromString(message)
                    seen.append(f"Refuse({refuse.reason})")
                else:
                    seen.append(NAMES[ftype])
        except Closed:
            return seen
        except socket.timeout:
            return None
        except ValueError as e:  # Half a frame before the close counts as closed.
            seen.append(f"garbled: {e}")
            return seen


class Refused(Exception):
    pass


def mac(secret, label, first, second):
    return hmac.new(secret, label.encode() + b"\0" + first + second, hashlib.sha256).digest()


def auth_as_dialer(link, secret):
    challenge = link.expect(AUTH_CHALLENGE, pb.AuthChallenge)
    if len(challenge.nonce) != NONCE_BYTES:
        raise ValueError(f"challenge nonce of {len(challenge.nonce)} bytes")
    own = os.urandom(NONCE_BYTES)
    response = pb.AuthResponse(mac=mac(secret, "dialer", challenge.nonce, own), nonce=own)
    link.send_msg(AUTH_RESPONSE, response)
    answer = link.expect(AUTH_RESPONSE, pb.AuthResponse)
    if not hmac.compare_digest(answer.mac, mac(secret, "acceptor", own, challenge.nonce)):
        raise ValueError("the daemon's authentication answer does not verify")


def auth_as_acceptor(link, secret):
    own = os.urandom(NONCE_BYTES)
    link.send_msg(AUTH_CHALLENGE, pb.AuthChallenge(nonce=own))
    response = link.expect(AUTH_RESPONSE, pb.AuthResponse)
    if not hmac.compare_digest(response.mac, mac(secret, "dialer", own, response.nonce)):
        raise ValueError("the daemon's authentication response does not verify")
    link.send_msg(AUTH_RESPONSE,
                  pb.AuthResponse(mac=mac(secret, "acceptor", response.nonce, own)))


def hello(args, **overrides):
    fields = dict(protocol_version=PROTOCOL_VERSION, node_id=args.node, role=pb.ROLE_PRIMARY,
                  volume_uuid=args.uuid.encode(), size_bytes=args.size, disk=pb.DISK_UP_TO_DATE,
                  current_gen=args.gen, bitmap_gen=args.gen)
    fields.update(overrides)
    return pb.Hello(**fields)


def result(ok, text):
    print(f"RESULT {'ok' if ok else 'WRONG'}: {text}", flush=True)
    return 0 if ok else 1


def connect(args):
    try:
        sock = socket.create_connection(("127.0.0.1", args.connect), timeout=args.timeout)
    except OSError as e:
        print(f"RESULT cannot connect to port {args.connect}: {e}", flush=True)
        sys.exit(2)
    return Link(sock, args.timeout)


def handshake_as_primary(link, args):
    """Authenticates, says Hello as the configured primary at the standby's own generation
    (--gen), reads the standby's marked regions, sends SyncPlan (nothing to resync), and waits
    for Ready: afterwards the standby applies what this link sends."""
    auth_as_dialer(link, args.secret)
    link.send_msg(HELLO, hello(args))
    theirs = link.expect(HELLO, pb.Hello)
    if theirs.role != pb.ROLE_SECONDARY or theirs.size_bytes != args.size:
        raise ValueError(f"unexpected Hello from the standby: {theirs}")
    while not link.expect(BITMAP_RUNS, pb.BitmapRuns).last:
        pass
    link.send_msg(SYNC_PLAN, pb.SyncPlan(volume_uuid=args.uuid.encode(),
                                         kind=pb.SyncPlan.KIND_NONE, target_gen=args.gen))
    link.expect(READY, pb.Ready)


def expect_dropped(link, args, what):
    seen = link.wait_closed(args.timeout)
    if seen is None:
        return result(False, f"{what}: the daemon kept the link open for {args.timeout} s")
    if any(s.startswith("Ack") for s in seen):
        return result(False, f"{what}: the daemon acknowledged it: {seen}")
    return result(True, f"{what}: the daemon dropped the link (sent before closing: {seen})")


def expect_refused(link, args, what, sender):
    """`sender` does the step the daemon must refuse."""
    try:
        sender()
        ftype, message, _ = link.read_skipping_heartbeats()
    except Refused as e:
        return result(True, f"{what}: refused: {e}")
    except Closed as e:
        return result(True, f"{what}: the daemon closed the link ({e}) without a reason")
    if ftype == REFUSE:
        refuse = pb.Refuse()
        refuse.ParseFromString(message)
        seen = link.wait_closed(args.timeout)
        if seen is None:
            return result(False, f"{what}: refused ({refuse.reason}) but the link stays open")
        return result(True, f"{what}: refused: {refuse.reason}")
    return result(False, f"{what}: the daemon answered with {NAMES[ftype]}")


# ---- cases ---------------------------------------------------------------------------------------
def case_good_write(args):
    link = connect(args)
    handshake_as_primary(link, args)
    with open(args.data, "rb") as f:
        data = f.read()
    write = pb.Write(seq=1, offset_bytes=args.offset, length_bytes=len(data), durable=True)
    link.send_msg(WRITE, write, data)
    ack = link.expect(ACK, pb.Ack)
    if ack.seq != 1 or ack.error != 0:
        return result(False, f"good-write: Ack(seq={ack.seq}, error={ack.error})")
    link.send_msg(FLUSH, pb.Flush(seq=2))
    ack = link.expect(ACK, pb.Ack)
    if ack.seq != 2 or ack.error != 0:
        return result(False, f"good-write: flush Ack(seq={ack.seq}, error={ack.error})")
    link.sock.close()
    return result(True, f"good-write: {len(data)} bytes at {args.offset} and a Flush acknowledged")


def case_wrong_secret(args):
    link = connect(args)
    good = args.secret
    args.secret = good + b"-wrong"
    try:
        auth_as_dialer(link, args.secret)
    except Refused as e:
        return result(True, f"wrong-secret: refused: {e}")
    except Closed as e:
        return result(True, f"wrong-secret: the daemon closed the link ({e})")
    except ValueError as e:
        return result(False, f"wrong-secret: {e}")
    return result(False, "wrong-secret: the daemon accepted a wrong secret")


def case_garbage(args):
    link = connect(args)
    link.expect(AUTH_CHALLENGE, pb.AuthChallenge)
    junk = os.urandom(64)
    while junk[:4] == b"NBMR":
        junk = os.urandom(64)
    link.send(junk)
    return expect_dropped(link, args, "garbage")


def case_oversized_handshake(args):
    link = connect(args)
    link.expect(AUTH_CHALLENGE, pb.AuthChallenge)
    link.send(frame(AUTH_RESPONSE, message_bytes=MAX_MESSAGE_BYTES + 1))
    return expect_dropped(link, args, "oversized-handshake")


def refused_hello(name, **overrides):
    def run(args):
        link = connect(args)
        auth_as_dialer(link, args.secret)
        return expect_refused(link, args, name,
                              lambda: link.send_msg(HELLO, hello(args, **overrides)))
    return run


def after_handshake(name, make_bytes):
    def run(args):
        link = connect(args)
        handshake_as_primary(link, args)
        link.send(make_bytes(args))
        return expect_dropped(link, args, name)
    return run


def bad_crc_bytes(args):
    data = os.urandom(4096)
    write = pb.Write(seq=1, offset_bytes=args.offset, length_bytes=len(data), durable=True)
    return frame(WRITE, write.SerializeToString(), data, corrupt_crc=True)


def oversized_bytes(args):
    return frame(WRITE, message_bytes=MAX_MESSAGE_BYTES + 1) + os.urandom(64)


def payload_on_flush_bytes(args):
    return frame(FLUSH, pb.Flush(seq=1).SerializeToString(), os.urandom(16))


def unknown_type_bytes(args):
    return frame(99, pb.Flush(seq=1).SerializeToString())


def past_end_bytes(args):
    data = os.urandom(8192)
    write = pb.Write(seq=1, offset_bytes=args.size - 4096, length_bytes=len(data), durable=True)
    return frame(WRITE, write.SerializeToString(), data)


def length_mismatch_bytes(args):
    data = os.urandom(8192)
    write = pb.Write(seq=1, offset_bytes=args.offset, length_bytes=4096, durable=True)
    return frame(WRITE, write.SerializeToString(), data)


def empty_write_bytes(args):
    write = pb.Write(seq=1, offset_bytes=args.offset, length_bytes=0, durable=True)
    return frame(WRITE, write.SerializeToString())


def empty_zero_bytes(args):
    zero = pb.Zero(seq=1, offset_bytes=args.offset, length_bytes=0, durable=True)
    return frame(ZERO, zero.SerializeToString())


def case_not_primary(args):
    return refused_hello("not-primary", role=pb.ROLE_SECONDARY)(args)


def case_wrong_size(args):
    return refused_hello("wrong-size", size_bytes=args.size + 4096)(args)


def case_hello_to_primary(args):
    link = connect(args)
    auth_as_dialer(link, args.secret)
    role = pb.ROLE_PRIMARY if args.role == "primary" else pb.ROLE_SECONDARY
    return expect_refused(link, args, f"hello-to-primary as {args.role}",
                          lambda: link.send_msg(HELLO, hello(args, role=role)))


def case_split_brain_standby(args):
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.listen))
    server.listen(1)
    server.settimeout(args.timeout)
    print("listening", flush=True)
    try:
        sock, _ = server.accept()
    except socket.timeout:
        return result(False, f"split-brain-standby: the primary did not dial in {args.timeout} s")
    server.close()
    link = Link(sock, args.timeout)
    auth_as_acceptor(link, args.secret)
    theirs = link.expect(HELLO, pb.Hello)
    if theirs.role != pb.ROLE_PRIMARY:
        return result(False, f"split-brain-standby: the dialer is not primary: {theirs}")
    ours = pb.Hello(protocol_version=PROTOCOL_VERSION, node_id=args.node, role=pb.ROLE_PRIMARY,
                    volume_uuid=theirs.volume_uuid, size_bytes=theirs.size_bytes,
                    disk=pb.DISK_UP_TO_DATE)
    return expect_refused(link, args, "split-brain-standby",
                          lambda: link.send_msg(HELLO, ours))


def selftest(args):
    check = crc32c(b"123456789")
    if check != 0xE3069283:
        print(f"crc32c(b'123456789') = {check:#010x}, expected 0xe3069283")
        return 1
    if crc32c(b"56789", crc32c(b"1234")) != check:
        print("crc32c does not chain")
        return 1
    message = pb.Hello(node_id="a", size_bytes=1 << 26).SerializeToString()
    f = frame(HELLO, message)
    magic, ftype, _, mlen, plen, crc = HEADER.unpack(f[:20])
    assert (magic, ftype, mlen, plen) == (MAGIC, HELLO, len(message), 0)
    assert crc == crc32c(f[20:], crc32c(f[:16] + b"\0\0\0\0"))
    print("selftest ok: crc32c(b'123456789') = 0xe3069283, frames round-trip")
    return 0


CASES = {
    "selftest": selftest,
    "good-write": case_good_write,
    "wrong-secret": case_wrong_secret,
    "garbage": case_garbage,
    "oversized-handshake": case_oversized_handshake,
    "wrong-node": refused_hello("wrong-node", node_id="mallory"),
    "not-primary": case_not_primary,
    "wrong-size": case_wrong_size,
    "wrong-uuid": refused_hello("wrong-uuid", volume_uuid=os.urandom(16).hex().encode()),
    "bad-crc": after_handshake("bad-crc", bad_crc_bytes),
    "oversized": after_handshake("oversized", oversized_bytes),
    "payload-on-flush": after_handshake("payload-on-flush", payload_on_flush_bytes),
    "unknown-type": after_handshake("unknown-type", unknown_type_bytes),
    "past-end": after_handshake("past-end", past_end_bytes),
    "length-mismatch": after_handshake("length-mismatch", length_mismatch_bytes),
    "empty-write": after_handshake("empty-write", empty_write_bytes),
    "empty-zero": after_handshake("empty-zero", empty_zero_bytes),
    "hello-to-primary": case_hello_to_primary,
    "split-brain-standby": case_split_brain_standby,
}


def main():
    global pb
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--pb-dir", required=True, help="where protoc put peer_pb2.py")
    parser.add_argument("--secret-file")
    parser.add_argument("--connect", type=int, help="dial 127.0.0.1:PORT")
    parser.add_argument("--listen", type=int, help="listen on 127.0.0.1:PORT")
    parser.add_argument("--node", default="a", help="the node id to claim")
    parser.add_argument("--role", default="secondary", choices=["primary", "secondary"])
    parser.add_argument("--uuid", default="", help="the volume identity (as in status)")
    parser.add_argument("--size", type=int, default=0, help="the volume size in bytes")
    parser.add_argument("--gen", type=lambda text: int(text, 16), default=0,
                        help="the generation to claim (hex, as current_gen in status)")
    parser.add_argument("--offset", type=int, default=0)
    parser.add_argument("--data", help="good-write: the bytes to write")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    sys.path.insert(0, args.pb_dir)
    import peer_pb2  # noqa: E402  (generated at test time)
    pb = peer_pb2
    if args.secret_file:
        with open(args.secret_file, "rb") as f:
            args.secret = f.read().rstrip(b"\r\n")
    elif args.case != "selftest":
        parser.error("--secret-file is required")
    try:
        return CASES[args.case](args)
    except Refused as e:
        return result(False, f"{args.case}: refused before the step under test: {e}")
    except (Closed, ValueError, socket.timeout) as e:
        return result(False, f"{args.case}: {type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
