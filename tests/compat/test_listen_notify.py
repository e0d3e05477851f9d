"""LISTEN/NOTIFY through sluice in transaction mode: psycopg 3's conn.notifies() (LISTEN in the
transaction psycopg opens, in autocommit, and through the extended protocol) and asyncpg's
add_listener, each with a client that did not listen and must hear nothing."""

import asyncio
import faulthandler
import time

import asyncpg
import psycopg
import pytest

from conftest import DB, DSN, URL, USER, admin, unique


@pytest.fixture(autouse=True)
def _deadline():
    """A scenario that hangs fails with every thread's traceback instead of stalling the suite."""
    faulthandler.dump_traceback_later(60, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def notes(conn, timeout, stop_after=None):
    return [(n.channel, n.payload) for n in conn.notifies(timeout=timeout, stop_after=stop_after)]


def test_psycopg3_notifies_after_a_committed_listen_and_not_after_a_rolled_back_one():
    kept, rolled = unique("pg3_kept"), unique("pg3_rolled")
    with psycopg.connect(DSN) as conn, psycopg.connect(DSN) as deaf, psycopg.connect(
        DSN, autocommit=True
    ) as sender:
        # Default psycopg: the LISTEN runs in the transaction it opens, and takes effect at COMMIT.
        conn.execute(f"LISTEN {rolled}")
        conn.rollback()
        conn.execute(f"LISTEN {kept}")
        conn.commit()
        deaf.execute("SELECT 1")
        deaf.commit()
        sender.execute("SELECT pg_notify(%s, 'no'), pg_notify(%s, 'yes')", (rolled, kept))
        assert notes(conn, timeout=10, stop_after=1) == [(kept, "yes")]
        assert notes(conn, timeout=0.5) == []
        assert notes(deaf, timeout=0.5) == []
        rows = [r for r in admin("SHOW LISTENERS") if r["channel"] == kept]
        assert len(rows) == 1 and rows[0]["database"] == DB and rows[0]["user"] == USER, rows
        assert int(rows[0]["subscribers"]) == 1 and rows[0]["listener_state"] == "listening", rows


def test_psycopg3_listen_through_the_extended_protocol_and_pipeline_mode():
    ext, piped = unique("pg3_ext"), unique("pg3_pipe")
    with psycopg.connect(DSN, autocommit=True) as conn, psycopg.connect(
        DSN, autocommit=True
    ) as sender:
        # binary=True makes psycopg use Parse/Bind/Describe/Execute/Sync.
        cur = conn.cursor()
        cur.execute(f"LISTEN {ext}", binary=True)
        assert cur.statusmessage == "LISTEN"
        with conn.pipeline():
            conn.execute(f"LISTEN {piped}")
        sender.execute("NOTIFY " + ext + ", 'e'")
        sender.execute("NOTIFY " + piped + ", 'p'")
        got = sorted(notes(conn, timeout=10, stop_after=2))
        assert got == sorted([(ext, "e"), (piped, "p")])


def test_asyncpg_add_listener_hears_only_its_channel():
    channel, other = unique("apg_ch"), unique("apg_other")

    async def main():
        conn = await asyncpg.connect(URL)
        deaf = await asyncpg.connect(URL)
        sender = await asyncpg.connect(URL)
        heard, deaf_heard = asyncio.Queue(), asyncio.Queue()

        def on_note(_conn, _pid, chan, payload):
            heard.put_nowait((chan, payload))

        await conn.add_listener(channel, on_note)
        deaf.add_termination_listener(lambda _c: deaf_heard.put_nowait("terminated"))
        try:
            await sender.execute("SELECT pg_notify($1, 'one'), pg_notify($2, 'x')", channel, other)
            async with sender.transaction():
                await sender.execute("SELECT pg_notify($1, 'two')", channel)
            assert await asyncio.wait_for(heard.get(), 10) == (channel, "one")
            assert await asyncio.wait_for(heard.get(), 10) == (channel, "two")
            await conn.remove_listener(channel, on_note)
            await sender.execute("SELECT pg_notify($1, 'three')", channel)
            await asyncio.sleep(0.5)
            assert heard.empty(), heard.get_nowait()
            assert deaf_heard.empty()
            # The connection still works for queries between notifications.
            assert await conn.fetchval("SELECT 41 + 1") == 42
        finally:
            await asyncio.gather(conn.close(), deaf.close(), sender.close())

    start = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - start < 30
