#!/usr/bin/env python3
"""Open N PostgreSQL client connections, log each in (trust auth: startup packet, then wait for
AuthenticationOk ... ReadyForQuery), and hold them idle until SIGTERM or SIGINT.

Usage: idle_clients.py HOST PORT USER DATABASE N
Prints "ready N" on stdout once every client is logged in and idle (or "failed: ..." and exits 1).
Standard library only.
"""
import asyncio
import signal
import struct
import sys


def startup_packet(user: str, database: str) -> bytes:
    body = struct.pack("!I", 196608)  # protocol 3.0
    for k, v in (("user", user), ("database", database), ("application_name", "idle_clients")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


async def login(host, port, packet, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(packet)
        await writer.drain()
        while True:
            head = await reader.readexactly(5)
            kind, length = head[:1], struct.unpack("!I", head[1:])[0]
            body = await reader.readexactly(length - 4)
            if kind == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise RuntimeError("server asked for a password; configure trust auth")
            if kind == b"E":
                raise RuntimeError("error: " + body.replace(b"\0", b" ").decode(errors="replace"))
            if kind == b"Z":
                return reader, writer


async def main() -> int:
    host, port, user, database, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
    packet = startup_packet(user, database)
    sem = asyncio.Semaphore(100)  # logins in flight at once
    try:
        conns = await asyncio.gather(*(login(host, port, packet, sem) for _ in range(n)))
    except Exception as e:  # noqa: BLE001 - report whatever broke the run
        print("failed: %r" % (e,), flush=True)
        return 1
    print("ready %d" % len(conns), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for _, w in conns:
        w.write(b"X\0\0\0\4")  # Terminate
        w.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
