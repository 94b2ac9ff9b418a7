#!/usr/bin/env python3
"""ack_recorder: the client whose acknowledged commits a failover must keep.

    ack_recorder.py OUT_FILE PSQL_COMMAND...

Drives one psql session over a pipe. For id = 1, 2, 3, ... it sends

    BEGIN; INSERT INTO acked VALUES (id); COMMIT;

(one transaction per id, synchronous_commit as the server has it, on by default) and reads
psql's command tags back. Only when psql prints the tag COMMIT for that transaction (the server
returns it after the commit record is flushed) is the id appended to OUT_FILE, one per line.
So OUT_FILE lists exactly the ids whose commit PostgreSQL acknowledged to this client, plus
nothing else; at most one further id may have committed without being acknowledged.

It stops at the first anomaly (psql exits, an error, an unexpected tag), says why on stderr,
and exits 0: losing the server mid-run is the point of the test. SIGTERM ends it and its psql.
"""

import os
import signal
import subprocess
import sys


def main():
    if len(sys.argv) < 3:
        sys.stderr.write("usage: ack_recorder.py OUT_FILE PSQL_COMMAND...\n")
        return 2
    out_path, psql_cmd = sys.argv[1], sys.argv[2:]
    # psql writes its tags through stdio; run it under stdbuf so each line is flushed to the
    # pipe at once rather than when a 4 KiB buffer fills.
    proc = subprocess.Popen(["stdbuf", "-oL"] + psql_cmd, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, bufsize=1)

    def on_term(signum, _frame):
        proc.kill()
        proc.wait()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    next_id = 1
    reason = ""
    try:
        while True:
            proc.stdin.write(f"BEGIN;\nINSERT INTO acked VALUES ({next_id});\nCOMMIT;\n")
            proc.stdin.flush()
            tags = []
            for expected in ("BEGIN", "INSERT 0 1", "COMMIT"):
                line = proc.stdout.readline()
                if not line:
                    reason = f"psql ended while id {next_id} was in flight (tags {tags})"
                    break
                tags.append(line.rstrip("\n"))
                if tags[-1] != expected:
                    reason = f"id {next_id}: expected tag {expected!r}, got {tags[-1]!r}"
                    break
            if reason:
                break
            # Acknowledged: record it before starting the next transaction.
            os.write(out, f"{next_id}\n".encode())
            next_id += 1
    except (BrokenPipeError, OSError) as e:
        reason = f"pipe to psql failed while id {next_id} was in flight: {e}"
    os.close(out)
    try:
        proc.stdin.close()
    except OSError:
        pass  # psql is gone; what it did not read does not matter.
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    sys.stderr.write(f"ack_recorder: stopped after {next_id - 1} acknowledged ids: {reason}; "
                     f"psql exit status {proc.returncode}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
