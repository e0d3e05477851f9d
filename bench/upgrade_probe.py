#!/usr/bin/env python3
"""Latency probe for an upgrade (bench/upgrade_pause.sh): C clients log in (trust) and each runs
`SELECT 1` in a loop for S seconds; every request's start time and latency go to OUT, one
"start_epoch_s latency_s" line each. A client whose connection breaks or gets an error counts as
failed (printed at the end: "done requests=N errors=E").

Usage: upgrade_probe.py HOST PORT USER DATABASE C S OUT
Standard library only.
"""
import asyncio
import struct
import sys
import time


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", database), ("application_name", "upgrade_probe")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


QUERY = b"SELECT 1\0"
QUERY_MSG = b"Q" + struct.pack("!I", len(QUERY) + 4) + QUERY


async def until_ready(reader):
    """Reads messages up to ReadyForQuery; raises on ErrorResponse."""
    while True:
        head = await reader.readexactly(5)
        body = await reader.readexactly(struct.unpack("!I", head[1:])[0] - 4)
        if head[:1] == b"E":
            raise RuntimeError(body.replace(b"\0", b" ").decode(errors="replace"))
        if head[:1] == b"Z":
            return


async def client(host, port, packet, deadline, samples, errors):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(packet)
    await until_ready(reader)
    try:
        while time.time() < deadline:
            start = time.time()
            writer.write(QUERY_MSG)
            await until_ready(reader)
            samples.append((start, time.time() - start))
    except Exception as e:  # noqa: BLE001 - a failure is what this counts
        errors.append(repr(e))
    writer.close()


async def main() -> int:
    host, port, user, db = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    n, seconds, out = int(sys.argv[5]), float(sys.argv[6]), sys.argv[7]
    packet = startup_packet(user, db)
    samples, errors = [], []
    deadline = time.time() + seconds
    await asyncio.gather(*(client(host, port, packet, deadline, samples, errors) for _ in range(n)))
    with open(out, "w") as f:
        for start, lat in samples:
            f.write("%.6f %.6f\n" % (start, lat))
    print("done requests=%d errors=%d %s" % (len(samples), len(errors), "; ".join(errors[:3])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
