#!/usr/bin/env python3
"""Clients that each prepare many large named statements through a pooler, then hold them.

Usage: prepared_memory.py HOST PORT USER DATABASE CLIENTS STATEMENTS SIZE
Each client logs in (trust auth), prepares STATEMENTS distinct named statements of about SIZE
bytes of text each (Parse messages in batches of 100, each batch ended by Sync), and keeps them.
Prints "ready PREPARED REFUSED" on stdout once every client is done (REFUSED: Parses answered with
an ErrorResponse, e.g. 53400 past max_client_prepared_statements), then holds the connections
until SIGTERM or SIGINT, when each client sends Terminate and closes. Standard library only.
"""
import asyncio
import signal
import struct
import sys

BATCH = 100


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)  # protocol 3.0
    for k, v in (("user", user), ("database", database), ("application_name", "prepared_memory")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


async def read_until_ready(reader):
    """Reads messages up to ReadyForQuery; returns the ErrorResponses' SQLSTATEs."""
    codes = []
    while True:
        head = await reader.readexactly(5)
        kind, length = head[:1], struct.unpack("!I", head[1:])[0]
        body = await reader.readexactly(length - 4)
        if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
            raise RuntimeError("server asked for a password; configure trust auth")
        if kind == b"E":
            fields = dict((f[:1], f[1:]) for f in body.split(b"\0") if f)
            codes.append(fields.get(b"C", b"?").decode())
        if kind == b"Z":
            return codes


async def client(host, port, packet, cid, statements, size):
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(packet)
    await writer.drain()
    codes = await read_until_ready(reader)
    if codes:
        raise RuntimeError("login failed: %s" % codes)
    filler = b"x" * max(0, size - 40)
    refused = 0
    for start in range(0, statements, BATCH):
        out = bytearray()
        for k in range(start, min(start + BATCH, statements)):
            name = b"c%d_s%d" % (cid, k)
            sql = b"SELECT %d /* %s */" % (k, filler)
            out += message(b"P", name + b"\0" + sql + b"\0" + b"\0\0")
        out += message(b"S", b"")
        writer.write(out)
        await writer.drain()
        # An error skips the rest of the batch: count the whole batch's remainder as refused.
        if await read_until_ready(reader):
            refused += min(start + BATCH, statements) - start
    return reader, writer, statements - refused, refused


async def main() -> int:
    host, port, user, database = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    clients, statements, size = int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
    packet = startup_packet(user, database)
    try:
        conns = await asyncio.gather(
            *(client(host, port, packet, cid, statements, size) for cid in range(clients))
        )
    except Exception as e:  # noqa: BLE001 - report whatever broke the run
        print("failed: %r" % (e,), flush=True)
        return 1
    print("ready %d %d" % (sum(c[2] for c in conns), sum(c[3] for c in conns)), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for _, w, _, _ in conns:
        w.write(b"X\0\0\0\4")  # Terminate
        w.close()
    for _, w, _, _ in conns:
        try:
            await w.wait_closed()
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
