"""asyncpg with its default settings (statement cache on, 100 statements) through sluice in
transaction mode: 100 concurrent tasks on a pool of 4 servers."""

import asyncio
import datetime
import decimal
import time
import uuid

import asyncpg
import pytest

from conftest import DB, POOL_SIZE, URL, PeakWatcher, admin, stats, unique

TASKS = 100
assert TASKS > POOL_SIZE


def run(coro):
    return asyncio.run(coro)


def test_100_tasks_on_their_own_connections_reuse_cached_statements_across_transactions():
    t = unique("apg_tasks")
    per_task = 20

    async def main():
        setup = await asyncpg.connect(URL)
        await setup.execute(f"CREATE TABLE {t} (task int, n int, payload text)")
        await setup.close()
        conns = await asyncio.gather(*(asyncpg.connect(URL) for _ in range(TASKS)))
        before = stats()

        servers = [set() for _ in range(TASKS)]  # the backends each connection's statements ran on

        async def task(i, conn):
            for n in range(per_task):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES ($1, $2, $3)", i, n, f"t{i}n{n}")
                    count, last, pid = await conn.fetchrow(
                        f"SELECT count(*), max(n), pg_backend_pid() FROM {t} WHERE task = $1", i
                    )
                    assert (count, last) == (n + 1, n)
                    servers[i].add(pid)
            # Default cache: each text was prepared once on this connection, then reused.
            assert conn._stmt_cache.get_max_size() == 100

        try:
            with PeakWatcher() as watch:
                await asyncio.gather(*(task(i, c) for i, c in enumerate(conns)))
            watch.assert_outnumbered(TASKS)
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        after = stats()

        executions = TASKS * per_task * 2
        binds = after["total_bind_count"] - before["total_bind_count"]
        parses = after["total_client_parse_count"] - before["total_client_parse_count"]
        assert binds >= executions, (binds, executions)
        # Two texts per connection, each parsed once (BEGIN and COMMIT are simple queries): the
        # parses stay a small multiple of the connections, far below the binds.
        assert parses <= TASKS * 3, (parses, TASKS)
        # ... and the cached statements ran on whichever server each transaction landed on.
        assert 2 <= len(set().union(*servers)) <= POOL_SIZE, servers
        moved = sum(len(s) >= 2 for s in servers)
        assert moved >= TASKS // 2, [len(s) for s in servers]

        check = await asyncpg.connect(URL)
        rows = await check.fetch(f"SELECT task, count(*) AS c, sum(n) AS s FROM {t} GROUP BY task ORDER BY task")
        await check.close()
        return rows

    rows = run(main())
    assert [r["task"] for r in rows] == list(range(TASKS))
    assert all(r["c"] == per_task and r["s"] == sum(range(per_task)) for r in rows)


def test_100_tasks_share_an_asyncpg_pool_of_100_connections():
    t = unique("apg_pool")
    per_task = 10

    async def main():
        pool = await asyncpg.create_pool(URL, min_size=TASKS, max_size=TASKS)
        try:
            await pool.execute(f"CREATE TABLE {t} (k int PRIMARY KEY, v bigint)")
            await pool.execute(f"INSERT INTO {t} VALUES (1, 0)")

            async def task(i):
                for _ in range(per_task):
                    async with pool.acquire() as conn:
                        async with conn.transaction():
                            v = await conn.fetchval(f"UPDATE {t} SET v = v + $1 WHERE k = 1 RETURNING v", i)
                            assert v >= i

            with PeakWatcher() as watch:
                await asyncio.gather(*(task(i) for i in range(TASKS)))
            watch.assert_outnumbered(TASKS)
            return await pool.fetchval(f"SELECT v FROM {t} WHERE k = 1")
        finally:
            await pool.close()

    assert run(main()) == per_task * sum(range(TASKS))


def test_pool_release_reset_keeps_the_connections_server_settings():
    # asyncpg's pool resets each connection it takes back (..., RESET ALL). On PostgreSQL, RESET
    # returns a setting to the connection's startup value, here the server_settings.
    settings = {"application_name": "apg-billing", "TimeZone": "Asia/Tokyo", "statement_timeout": "5s"}
    query = (
        "SELECT current_setting('application_name'), current_setting('TimeZone'), "
        "current_setting('statement_timeout')"
    )

    async def main():
        pool = await asyncpg.create_pool(URL, min_size=1, max_size=1, server_settings=settings)
        seen = []
        try:
            for _ in range(5):
                async with pool.acquire() as conn:
                    seen.append(tuple(await conn.fetchrow(query)))
        finally:
            await pool.close()
        return seen

    assert run(main()) == [("apg-billing", "Asia/Tokyo", "5s")] * 5


def test_explicitly_prepared_statement_is_reused_in_many_transactions():
    async def main():
        conn = await asyncpg.connect(URL)
        try:
            stmt = await conn.prepare(
                "SELECT $1::int * 2 AS doubled, $2::text || '!' AS shout, pg_backend_pid() AS server"
            )
            before = stats()
            servers = set()
            for i in range(300):
                async with conn.transaction():
                    row = await stmt.fetchrow(i, f"s{i}")
                    assert (row["doubled"], row["shout"]) == (i * 2, f"s{i}!")
                    servers.add(row["server"])
            after = stats()
            assert after["total_bind_count"] - before["total_bind_count"] >= 300
            assert after["total_client_parse_count"] - before["total_client_parse_count"] == 0
            assert [a.name for a in stmt.get_attributes()] == ["doubled", "shout", "server"]
            # The background clients keep servers busy, so the one statement ran on several.
            assert len(servers) >= 2, servers
        finally:
            await conn.close()

    run(main())


def test_more_statements_than_asyncpg_caches_and_sluice_keeps_per_server():
    # asyncpg caches 100 statements per connection and closes the ones it evicts; sluice keeps
    # max_prepared_statements (200) per server and closes its least recently used. Cycling through
    # 250 texts on more connections than servers evicts on both sides all the time.
    texts = 250
    n_conns = 2 * POOL_SIZE
    rounds = 2

    async def main():
        conns = await asyncio.gather(*(asyncpg.connect(URL) for _ in range(n_conns)))
        before = stats()

        async def task(i, conn):
            for r in range(rounds):
                for step in range(texts):
                    k = (step + 31 * i) % texts  # each connection in its own order
                    v = await conn.fetchval(f"SELECT $1::int + {k} /* apg_many */", 1000 * i + r)
                    assert v == 1000 * i + r + k, (i, r, k, v)
            assert len(conn._stmt_cache) == 100

        try:
            await asyncio.gather(*(task(i, c) for i, c in enumerate(conns)))
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        return before, stats()

    before, after = run(main())
    executions = n_conns * texts * rounds
    # Cycling 250 texts through a cache of 100 misses every time: each execution parses anew.
    assert after["total_client_parse_count"] - before["total_client_parse_count"] >= executions
    assert after["total_bind_count"] - before["total_bind_count"] >= executions
    held = [int(r["prepared_statements"]) for r in admin("SHOW SERVERS") if r["database"] == DB]
    assert held and all(h <= 200 for h in held), held
    assert max(held) > 100, held  # the statements of several connections share a server


def test_statement_cache_size_0_as_pgbouncer_users_configure_it():
    # PgBouncer's old advice for asyncpg. Each query is then an unnamed statement prepared in one
    # round trip (Parse, Describe, Sync) and bound in the next (Bind, Execute, Sync): outside a
    # transaction, the second may land on another server.
    n_conns = 40
    per_conn = 30

    async def main():
        conns = await asyncio.gather(*(asyncpg.connect(URL, statement_cache_size=0) for _ in range(n_conns)))
        servers = set()

        async def task(i, conn):
            for n in range(per_conn):
                v, s, pid = await conn.fetchrow(
                    "SELECT $1::int * 2, $2::text || '?', pg_backend_pid() FROM pg_sleep(0.001)", i * 100 + n, f"q{n}"
                )
                assert (v, s) == (2 * (i * 100 + n), f"q{n}?")
                servers.add(pid)
            assert len(conn._stmt_cache) == 0

        try:
            with PeakWatcher() as watch:
                await asyncio.gather(*(task(i, c) for i, c in enumerate(conns)))
            watch.assert_outnumbered(n_conns)
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        return servers

    assert len(run(main())) >= 2


def test_command_timeouts_cancel_the_query_on_its_server():
    # asyncpg's timeout sends a CancelRequest; sluice must deliver it to the server running that
    # client's query. Twice as many sleepers as servers: half of them are still queued at sluice
    # when their timeout fires.
    n_conns = 2 * POOL_SIZE

    async def main():
        conns = await asyncio.gather(*(asyncpg.connect(URL) for _ in range(n_conns)))
        try:

            async def sleeper(i, conn):
                with pytest.raises(asyncio.TimeoutError):
                    await conn.fetchval("SELECT pg_sleep(30) /* apg_cancel */", timeout=0.5)
                # The connection is usable at once: its server was not left sleeping.
                assert await conn.fetchval("SELECT $1::int + 1", i) == i + 1

            start = time.monotonic()
            await asyncio.gather(*(sleeper(i, c) for i, c in enumerate(conns)))
            elapsed = time.monotonic() - start
            still = await conns[0].fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%apg_cancel%' AND pid <> pg_backend_pid()"
                " AND state = 'active'"
            )
            return elapsed, still
        finally:
            await asyncio.gather(*(c.close() for c in conns))

    elapsed, still = run(main())
    assert still == 0
    assert elapsed < 10, elapsed


def test_rollback_really_rolls_back():
    t = unique("apg_rollback")

    class Boom(Exception):
        pass

    async def main():
        conn = await asyncpg.connect(URL)
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
            await conn.execute(f"INSERT INTO {t} VALUES (1, 'kept')")
            with pytest.raises(Boom):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES (2, 'gone')")
                    await conn.execute(f"UPDATE {t} SET v = 'changed' WHERE id = 1")
                    raise Boom()
            with pytest.raises(asyncpg.UniqueViolationError):
                async with conn.transaction():
                    await conn.execute(f"INSERT INTO {t} VALUES (3, 'gone too')")
                    await conn.execute(f"INSERT INTO {t} VALUES (1, 'duplicate')")
            # A savepoint rolled back inside a committed transaction.
            async with conn.transaction():
                await conn.execute(f"INSERT INTO {t} VALUES (4, 'outer')")
                with pytest.raises(Boom):
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {t} VALUES (5, 'inner')")
                        raise Boom()
            return await conn.fetch(f"SELECT id, v FROM {t} ORDER BY id")
        finally:
            await conn.close()

    assert [tuple(r) for r in run(main())] == [(1, "kept"), (4, "outer")]


async def prepare_on_every_server(query):
    """Runs `query` in POOL_SIZE transactions open at once, so that each runs on its own server and
    every server of the pool ends up with the statement prepared."""
    conns = await asyncio.gather(*(asyncpg.connect(URL) for _ in range(POOL_SIZE)))
    try:
        inside = asyncio.Barrier(POOL_SIZE)
        pids = set()

        async def hold(conn):
            async with conn.transaction():
                await conn.fetch(query)
                pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                await asyncio.wait_for(inside.wait(), 30)

        await asyncio.gather(*(hold(c) for c in conns))
        assert len(pids) == POOL_SIZE, pids
    finally:
        await asyncio.gather(*(c.close() for c in conns))


def test_new_connection_after_a_schema_change_reads_the_new_columns():
    t = unique("apg_schema_new_conn")

    async def main():
        setup = await asyncpg.connect(URL)
        try:
            await setup.execute(f"CREATE TABLE {t} (id int)")
            await setup.execute(f"INSERT INTO {t} VALUES (1)")
            await prepare_on_every_server(f"SELECT * FROM {t}")
            await setup.execute(f"ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'new'")
        finally:
            await setup.close()
        # A connection opened after the migration prepares the query for the first time.
        conn = await asyncpg.connect(URL)
        try:
            rows = await conn.fetch(f"SELECT * FROM {t}")
            return [tuple(r) for r in rows], list(rows[0].keys())
        finally:
            await conn.close()

    assert run(main()) == ([(1, "new")], ["id", "extra"])


def test_schema_change_under_a_cached_select_star_on_a_new_server_is_retried_by_asyncpg():
    t = unique("apg_schema_new_server")

    async def main():
        conn = await asyncpg.connect(URL)
        try:
            await conn.execute(f"CREATE TABLE {t} (id int)")
            await conn.execute(f"INSERT INTO {t} VALUES (1)")
            assert [tuple(r) for r in await conn.fetch(f"SELECT * FROM {t}")] == [(1,)]
            await conn.execute(f"ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'new'")
            # Every server is replaced (as by server_lifetime): the next one has no statements.
            admin(f"RECONNECT {DB}")
            # Straight to PostgreSQL, asyncpg gets "cached plan must not change result type",
            # re-prepares and retries by itself.
            rows = await conn.fetch(f"SELECT * FROM {t}")
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    assert run(main()) == [(1, "new")]


def test_types_and_codecs_round_trip():
    async def main():
        conn = await asyncpg.connect(URL)
        try:
            u = uuid.uuid4()
            ts = datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc)
            row = await conn.fetchrow(
                "SELECT $1::uuid, $2::timestamptz, $3::numeric, $4::int[], $5::bytea, $6::jsonb, "
                "$7::interval, $8::inet",
                u,
                ts,
                decimal.Decimal("3.14159265358979323846"),
                [1, None, 3],
                b"\x00\xff",
                '{"k": [1, 2]}',
                datetime.timedelta(days=2, seconds=5),
                "10.0.0.1",
            )
            return row, u, ts
        finally:
            await conn.close()

    row, u, ts = run(main())
    assert row[0] == u
    assert row[1] == ts
    assert row[2] == decimal.Decimal("3.14159265358979323846")
    assert row[3] == [1, None, 3]
    assert row[4] == b"\x00\xff"
    assert row[5] == '{"k": [1, 2]}'
    assert row[6] == datetime.timedelta(days=2, seconds=5)
    assert str(row[7]) == "10.0.0.1"


def test_executemany_copy_and_cursor_in_a_transaction():
    t = unique("apg_bulk")

    async def main():
        conn = await asyncpg.connect(URL)
        try:
            await conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, label text)")
            await conn.executemany(f"INSERT INTO {t} VALUES ($1, $2)", [(i, f"e{i}") for i in range(1000)])
            copied = await conn.copy_records_to_table(t, records=[(i, f"c{i}") for i in range(1000, 11000)])
            assert copied == "COPY 10000"
            total = 0
            count = 0
            async with conn.transaction():
                async for record in conn.cursor(f"SELECT id FROM {t} ORDER BY id", prefetch=700):
                    total += record["id"]
                    count += 1
            return count, total, await conn.fetchval(f"SELECT count(*) FROM {t} WHERE label LIKE 'e%'")
        finally:
            await conn.close()

    assert run(main()) == (11000, sum(range(11000)), 1000)
