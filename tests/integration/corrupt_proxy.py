#!/usr/bin/env python3
"""corrupt_proxy: a TCP proxy between the primary and the standby that can flip one byte of a
peer frame. Used by mirror_chaos_test.sh.

    corrupt_proxy.py LISTEN_HOST:PORT TARGET_HOST:PORT DUMP_DIR

Listens on LISTEN_HOST:PORT; for each connection it dials TARGET_HOST:PORT and copies bytes
both ways. Standby -> primary is copied as it comes. Primary -> standby is cut into frames
(transport/frame.h: 20-byte header "NBMR", type, reserved, message_bytes, payload_bytes, crc32c)
and each complete frame is forwarded unchanged, except:

  SIGUSR1  arms the proxy: the next Write frame that carries a payload gets one byte of its
           payload inverted (the header and its CRC are left alone, so the frame's CRC32C no
           longer matches). The corrupted payload is saved as DUMP_DIR/corrupt.N.bin and the
           proxy prints "corrupted N offset_bytes=O length_bytes=L flipped_at=P". From then on
           the proxy is held: it accepts new connections and closes them at once, so the
           primary cannot reconnect until
  SIGUSR2  releases it ("released").

Prints "listening" once ready, "connected N" / "closed N" per connection, and "unframed" if
the primary's stream ever stops looking like frames (then it passes bytes through unparsed and
never corrupts), all flushed. Exits on SIGTERM.
"""

import os
import signal
import socket
import struct
import sys
import threading

FRAME_MAGIC = 0x4E424D52
HEADER = struct.Struct(">IHHIII")  # magic, type, reserved, message_bytes, payload_bytes, crc
TYPE_WRITE = 10

lock = threading.Lock()
armed = threading.Event()
held = threading.Event()
state = {"corruptions": 0, "connections": 0}


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def varint(buf, pos):
    value = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def write_offset(message):
    """offset_bytes (field 2, varint) of a serialized nbdmirror.peer.Write; -1 if absent."""
    pos = 0
    while pos < len(message):
        key, pos = varint(message, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = varint(message, pos)
            if field == 2:
                return value
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = varint(message, pos)
            pos += length
        else:
            return -1
    return -1


def corrupt(buf, start, message_bytes, payload_bytes, dump_dir):
    """Inverts one byte of the payload of the frame at buf[start:], saves the corrupted payload."""
    payload_at = start + HEADER.size + message_bytes
    with lock:
        state["corruptions"] += 1
        n = state["corruptions"]
    flip = (n * 2654435761) % payload_bytes
    buf[payload_at + flip] ^= 0xFF
    message = bytes(buf[start + HEADER.size:payload_at])
    with open(os.path.join(dump_dir, f"corrupt.{n}.bin"), "wb") as f:
        f.write(buf[payload_at:payload_at + payload_bytes])
    say(f"corrupted {n} offset_bytes={write_offset(message)} length_bytes={payload_bytes} "
        f"flipped_at={flip}")


def close_both(a, b):
    for s in (a, b):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            s.close()
        except OSError:
            pass


def pump_up(client, target, dump_dir, n):
    """Primary -> standby, frame by frame."""
    buf = bytearray()
    framed = True
    try:
        while True:
            data = client.recv(1 << 18)
            if not data:
                break
            buf += data
            if not framed:
                target.sendall(buf)
                buf.clear()
                continue
            pos = 0
            while len(buf) - pos >= HEADER.size:
                magic, ftype, _, message_bytes, payload_bytes, _ = HEADER.unpack_from(buf, pos)
                if magic != FRAME_MAGIC:
                    say(f"unframed {n}")
                    framed = False
                    pos = len(buf)
                    break
                end = pos + HEADER.size + message_bytes + payload_bytes
                if end > len(buf):
                    break
                if ftype == TYPE_WRITE and payload_bytes > 0 and armed.is_set():
                    armed.clear()
                    held.set()
                    corrupt(buf, pos, message_bytes, payload_bytes, dump_dir)
                pos = end
            if pos:
                target.sendall(buf[:pos])
                del buf[:pos]
    except OSError:
        pass
    close_both(client, target)
    say(f"closed {n}")


def pump_down(client, target):
    """Standby -> primary, as it comes."""
    try:
        while True:
            data = target.recv(1 << 16)
            if not data:
                break
            client.sendall(data)
    except OSError:
        pass
    close_both(client, target)


def on_usr1(signum, frame):
    armed.set()
    say("armed")


def on_usr2(signum, frame):
    held.clear()
    say("released")


def split(hostport):
    host, port = hostport.rsplit(":", 1)
    return host, int(port)


def main():
    listen, target_addr, dump_dir = split(sys.argv[1]), split(sys.argv[2]), sys.argv[3]
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(listen)
    server.listen(8)
    say("listening")
    while True:
        client, _ = server.accept()
        if held.is_set():
            client.close()
            continue
        try:
            target = socket.create_connection(target_addr, timeout=2)
        except OSError:
            client.close()
            continue
        target.settimeout(None)
        for s in (client, target):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        state["connections"] += 1
        n = state["connections"]
        say(f"connected {n}")
        threading.Thread(target=pump_up, args=(client, target, dump_dir, n), daemon=True).start()
        threading.Thread(target=pump_down, args=(client, target), daemon=True).start()


if __name__ == "__main__":
    main()
