#!/usr/bin/env python3
"""withhold_proxy: a TCP proxy between the primary and the standby that can hold back what the
standby sends. Used by mirror_ack_rule_test.sh.

    withhold_proxy.py LISTEN_PORT TARGET_PORT [--acks-only | --ready-only]

Listens on 127.0.0.1:LISTEN_PORT, and for each connection dials 127.0.0.1:TARGET_PORT and
copies bytes both ways. SIGUSR1: from now on, bytes from the standby (target -> client) are
read and kept, not forwarded. SIGUSR2: forward what was kept, in order, and go on forwarding.
With --acks-only, only the standby's Ack frames are kept; its other frames (heartbeats above
all) go on flowing, as from a standby whose disk hangs. With --ready-only, a handshake's Ready
frame is kept, and everything after it on that connection (the primary is then between its sync
decision and streaming); "kept Ready" is printed when one is. Primary -> standby always flows.
Prints "listening" once ready, then "withholding" / "released N bytes" on each signal, flushed.
Loopback only; exits on SIGTERM.
"""

import signal
import socket
import struct
import sys
import threading

HEADER = struct.Struct(">IHHIII")  # magic, type, reserved, message_bytes, payload_bytes, crc
READY = 5
ACK = 13
acks_only = "--acks-only" in sys.argv[3:]
ready_only = "--ready-only" in sys.argv[3:]

withhold = threading.Event()
lock = threading.RLock()  # Re-entrant: the signal handlers run on the main thread.
links = []  # [client socket, kept bytearray] of live connections


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def pump_up(client, target):
    """Primary -> standby: always forwarded."""
    try:
        while True:
            data = client.recv(1 << 16)
            if not data:
                break
            target.sendall(data)
    except OSError:
        pass
    for s in (client, target):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def split_frames(pending):
    """Whole frames at the front of `pending` (removed from it), as (type, bytes) pairs."""
    frames = []
    while len(pending) >= HEADER.size:
        _, ftype, _, mlen, plen, _ = HEADER.unpack(bytes(pending[:HEADER.size]))
        end = HEADER.size + mlen + plen
        if len(pending) < end:
            break
        frames.append((ftype, bytes(pending[:end])))
        del pending[:end]
    return frames


def pump_down(link, target):
    """Standby -> primary: forwarded unless withheld."""
    client, kept = link
    partial = bytearray()  # --acks-only: the start of a frame not yet whole.
    target.settimeout(0.05)
    try:
        while True:
            try:
                data = target.recv(1 << 16)
            except socket.timeout:
                data = None
            if data == b"":
                break
            with lock:
                if acks_only or ready_only:
                    partial.extend(data or b"")
                    for ftype, raw in split_frames(partial):
                        if acks_only:
                            keep = ftype == ACK and (withhold.is_set() or kept)
                        else:
                            keep = (ftype == READY and withhold.is_set()) or bool(kept)
                            if keep and ftype == READY:
                                say("kept Ready")
                        if keep:
                            kept.extend(raw)
                        else:
                            client.sendall(raw)
                    if kept and not withhold.is_set():
                        client.sendall(bytes(kept))
                        kept.clear()
                    continue
                if data:
                    kept.extend(data)
                if kept and not withhold.is_set():
                    client.sendall(bytes(kept))
                    kept.clear()
    except OSError:
        pass
    for s in (client, target):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def on_usr1(signum, frame):
    withhold.set()
    say("withholding")


def on_usr2(signum, frame):
    with lock:
        kept = sum(len(link[1]) for link in links)
    withhold.clear()
    say(f"released {kept} bytes")


def main():
    listen_port, target_port = int(sys.argv[1]), int(sys.argv[2])
    signal.signal(signal.SIGUSR1, on_usr1)
    signal.signal(signal.SIGUSR2, on_usr2)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", listen_port))
    server.listen(8)
    say("listening")
    while True:
        client, _ = server.accept()
        try:
            target = socket.create_connection(("127.0.0.1", target_port), timeout=5)
        except OSError:
            client.close()
            continue
        target.settimeout(None)
        for s in (client, target):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = [client, bytearray()]
        with lock:
            links.append(link)
        threading.Thread(target=pump_up, args=(client, target), daemon=True).start()
        threading.Thread(target=pump_down, args=(link, target), daemon=True).start()


if __name__ == "__main__":
    main()
