"""psycopg2 (libpq, simple query protocol) through sluice in transaction mode."""

import datetime
import decimal
import io
import threading

import psycopg2
import psycopg2.extras
import psycopg2.pool
import pytest

from conftest import DSN, POOL_SIZE, THREADS, PeakWatcher, run_threads, unique


def connect(**kwargs):
    return psycopg2.connect(DSN, **kwargs)


def test_threads_outnumbering_the_pool_each_read_back_their_own_rows():
    t = unique("p2_rows")
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (worker int, n int, note text)")
    conn.close()
    per_thread = 25

    def work(i):
        conn = connect(application_name=f"psycopg2-worker-{i}")
        try:
            for n in range(per_thread):
                with conn, conn.cursor() as cur:
                    cur.execute(f"INSERT INTO {t} VALUES (%s, %s, %s)", (i, n, f"w{i} n{n}"))
                    cur.execute(f"SELECT count(*), max(n) FROM {t} WHERE worker = %s", (i,))
                    assert cur.fetchone() == (n + 1, n)
        finally:
            conn.close()

    with PeakWatcher() as watch:
        run_threads(THREADS, work)
    watch.assert_outnumbered(THREADS)

    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT worker, count(*), string_agg(note, ',' ORDER BY n) FROM {t} GROUP BY worker ORDER BY worker")
        rows = cur.fetchall()
    conn.close()
    assert [r[0] for r in rows] == list(range(THREADS))
    for worker, count, notes in rows:
        assert count == per_thread
        assert notes == ",".join(f"w{worker} n{n}" for n in range(per_thread))


def test_rollback_discards_the_transaction_and_the_connection_stays_usable():
    t = unique("p2_rollback")
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
            cur.execute(f"INSERT INTO {t} VALUES (1, 'kept')")

        cur = conn.cursor()
        cur.execute(f"INSERT INTO {t} VALUES (2, 'rolled back')")
        cur.execute(f"UPDATE {t} SET v = 'changed' WHERE id = 1")
        conn.rollback()

        # An error aborts the transaction; after rollback the connection works again.
        with pytest.raises(psycopg2.errors.UniqueViolation):
            with conn, conn.cursor() as cur:
                cur.execute(f"INSERT INTO {t} VALUES (3, 'also rolled back')")
                cur.execute(f"INSERT INTO {t} VALUES (1, 'duplicate')")

        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT id, v FROM {t} ORDER BY id")
            assert cur.fetchall() == [(1, "kept")]
    finally:
        conn.close()


def test_autocommit_statements_each_commit_on_their_own():
    t = unique("p2_autocommit")
    conn = connect()
    other = connect()
    try:
        conn.autocommit = True
        other.autocommit = True
        with conn.cursor() as cur, other.cursor() as ocur:
            cur.execute(f"CREATE TABLE {t} (id serial PRIMARY KEY, v int)")
            for v in range(50):
                cur.execute(f"INSERT INTO {t} (v) VALUES (%s) RETURNING id", (v,))
                assert cur.fetchone() == (v + 1,)
                # Visible at once to another client: nothing was left in an open transaction.
                ocur.execute(f"SELECT count(*) FROM {t}")
                assert ocur.fetchone() == (v + 1,)
    finally:
        conn.close()
        other.close()


def test_types_round_trip():
    conn = connect()
    try:
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        with conn, conn.cursor() as cur:
            values = (
                decimal.Decimal("12345678901234567890.000000001"),
                datetime.datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=datetime.timezone.utc),
                datetime.date(1999, 12, 31),
                [1, 2, 3, None],
                b"\x00\x01\xffbytes",
                psycopg2.extras.Json({"a": [1, "two", None], "b": {"c": True}}),
                "ünïcødé ✓ 'quotes' \"and\" \\backslash",
            )
            cur.execute(
                "SELECT %s::numeric, %s::timestamptz, %s::date, %s::int[], %s::bytea, %s::jsonb, %s::text",
                values,
            )
            row = cur.fetchone()
        assert row[0] == values[0]
        assert row[1] == values[1]
        assert row[2] == values[2]
        assert row[3] == values[3]
        assert bytes(row[4]) == values[4]
        assert row[5] == {"a": [1, "two", None], "b": {"c": True}}
        assert row[6] == values[6]
    finally:
        conn.close()


def test_named_cursor_inside_a_transaction_fetches_in_batches():
    conn = connect()
    try:
        with conn:
            with conn.cursor(name="p2_big_cursor") as cur:
                cur.itersize = 500
                cur.execute("SELECT g, md5(g::text) FROM generate_series(1, 5000) g")
                total = 0
                count = 0
                for g, digest in cur:
                    assert len(digest) == 32
                    total += g
                    count += 1
        assert count == 5000
        assert total == 5000 * 5001 // 2
    finally:
        conn.close()


def test_execute_values_and_executemany_insert_every_row():
    t = unique("p2_bulk")
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, label text)")
            psycopg2.extras.execute_values(
                cur, f"INSERT INTO {t} VALUES %s", [(i, f"v{i}") for i in range(5000)], page_size=1000
            )
            cur.executemany(f"INSERT INTO {t} VALUES (%s, %s)", [(i, f"m{i}") for i in range(5000, 5200)])
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT count(*), sum(id), count(*) FILTER (WHERE label LIKE 'm%%') FROM {t}")
            assert cur.fetchone() == (5200, 5200 * 5199 // 2, 200)
    finally:
        conn.close()


def test_copy_in_and_out():
    t = unique("p2_copy")
    conn = connect()
    try:
        rows = "".join(f"{i}\tline {i}\n" for i in range(10000))
        with conn, conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {t} (id int, line text)")
            cur.copy_expert(f"COPY {t} FROM STDIN", io.StringIO(rows))
            assert cur.rowcount == 10000
        out = io.StringIO()
        with conn, conn.cursor() as cur:
            cur.copy_expert(f"COPY (SELECT * FROM {t} ORDER BY id) TO STDOUT", out)
        assert out.getvalue() == rows
    finally:
        conn.close()


def test_sql_prepare_and_execute_within_one_transaction():
    conn = connect()
    try:
        with conn, conn.cursor() as cur:
            cur.execute("PREPARE p2_square(int) AS SELECT $1 * $1")
            for i in range(20):
                cur.execute("EXECUTE p2_square(%s)", (i,))
                assert cur.fetchone() == (i * i,)
            cur.execute("DEALLOCATE p2_square")
    finally:
        conn.close()


def test_threaded_connection_pool_larger_than_sluices_pool():
    t = unique("p2_tpool")
    with connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {t} (k text PRIMARY KEY, v int)")
        cur.execute(f"INSERT INTO {t} VALUES ('hits', 0)")
    conn.close()
    pool = psycopg2.pool.ThreadedConnectionPool(THREADS, THREADS, DSN)
    per_thread = 20
    try:

        def work(i):
            for _ in range(per_thread):
                conn = pool.getconn()
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute(f"UPDATE {t} SET v = v + 1 WHERE k = 'hits' RETURNING v")
                        assert cur.fetchone()[0] >= 1
                finally:
                    pool.putconn(conn)

        run_threads(THREADS, work)
        conn = pool.getconn()
        with conn, conn.cursor() as cur:
            cur.execute(f"SELECT v FROM {t} WHERE k = 'hits'")
            assert cur.fetchone() == (THREADS * per_thread,)
        pool.putconn(conn)
    finally:
        pool.closeall()
    assert THREADS > POOL_SIZE


def test_startup_parameters_apply_on_every_server_the_client_lands_on():
    # options=-c ... is a startup parameter: sluice applies it on whichever server the client gets.
    # Background clients keep servers busy so that this client moves between servers.
    stop = threading.Event()

    def busy(_):
        conn = connect()
        try:
            while not stop.is_set():
                with conn, conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.005)")
        finally:
            conn.close()

    background = threading.Thread(target=run_threads, args=(6, busy))
    background.start()
    # (Not DateStyle: psycopg2 itself sets it to ISO when it connects.)
    conn = connect(options="-c IntervalStyle=postgres_verbose -c TimeZone=Asia/Tokyo -c statement_timeout=12345")
    seen = set()
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            for _ in range(500):
                cur.execute(
                    "SELECT current_setting('TimeZone'), current_setting('statement_timeout'), "
                    "'2024-03-01 12:00:00+00'::timestamptz::text, '90 minutes'::interval::text, pg_backend_pid()"
                )
                tz, timeout, ts, interval, pid = cur.fetchone()
                assert (tz, timeout) == ("Asia/Tokyo", "12345ms")
                assert ts == "2024-03-01 21:00:00+09"
                assert interval == "@ 1 hour 30 mins"
                seen.add(pid)
                if len(seen) >= 3:
                    break
    finally:
        conn.close()
        stop.set()
        background.join()
    assert len(seen) >= 3, f"stayed on servers {seen}"
