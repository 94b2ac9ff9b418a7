#!/usr/bin/env python3
"""ack_probe: one NBD connection that sends one request at a time, on command, and reports
exactly when each reply arrives. Used by mirror_ack_rule_test.sh to see whether a reply comes
before the standby has confirmed.

    ack_probe.py SOCKET < COMMANDS > EVENTS

It connects to the Unix socket (plain handshake, simple replies), prints "ready", then reads
commands from stdin, one per line, and runs each to its reply before reading the next:

    write OFFSET FILE   WRITE the whole content of FILE at OFFSET
    flush               FLUSH
    quit                disconnect and exit 0

For each it prints "sent N CMD" the moment the request is on the socket, then
"reply N error=E ms=L" when the reply arrives (L: milliseconds since sent), or "closed N ..." if
the server closes first (exit 1). Every line is flushed at once, so a test can poll the output.
A reply waits at most --reply-timeout seconds (default 120; then "timeout N", exit 2).
"""

import argparse
import os
import socket
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import nbd_client  # noqa: E402


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("socket")
    parser.add_argument("--reply-timeout", type=float, default=120.0)
    args = parser.parse_args()

    conn = nbd_client.Connection(unix_path=args.socket, timeout=10.0)
    conn.connect(structured=False)
    say(f"ready size={conn.size}")
    n = 0
    for line in iter(sys.stdin.readline, ""):
        words = line.split()
        if not words:
            continue
        if words[0] == "quit":
            conn.disconnect()
            conn.close()
            say("bye")
            return 0
        n += 1
        if words[0] == "write":
            offset = int(words[1])
            with open(words[2], "rb") as f:
                data = f.read()
            conn.send_request(nbd_client.CMD_WRITE, offset, len(data), payload=data)
        elif words[0] == "flush":
            conn.send_request(nbd_client.CMD_FLUSH)
        else:
            say(f"error unknown command {words[0]!r}")
            return 3
        sent = time.monotonic()
        say(f"sent {n} {words[0]}")
        conn.sock.settimeout(args.reply_timeout)
        try:
            reply = conn.read_reply()
        except socket.timeout:
            say(f"timeout {n}")
            return 2
        except nbd_client.Closed as e:
            say(f"closed {n} {e}")
            return 1
        say(f"reply {n} error={reply.error} ms={int((time.monotonic() - sent) * 1000)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
