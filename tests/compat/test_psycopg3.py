"""psycopg 3 (extended protocol, server-side binding) through sluice in transaction mode:
automatic preparation (prepare_threshold 0 and the default 5), pipeline mode, COPY, async."""

import asyncio

import psycopg
import psycopg._connection_base
import pytest
from psycopg import pq, sql

from conftest import DSN, THREADS, PeakWatcher, run_threads, stats, unique


def connect(**kwargs):
    return psycopg.connect(DSN, **kwargs)


def server_statements(cur, marker):
    """Texts of the statements prepared on the server this transaction runs on whose text contains
    `marker`."""
    cur.execute(
        "SELECT statement FROM pg_prepared_statements WHERE statement LIKE %s",
        ("%" + marker + "%",),
    )
    return [r[0] for r in cur.fetchall()]


def test_prepare_threshold_zero_prepares_every_query_and_reuses_it_across_transactions():
    t = unique("p3_prep0")
    with connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (worker int, n int, sq int)")
    per_thread = 30
    before = stats()

    def work(i):
        with connect(prepare_threshold=0, application_name=f"p3-prep0-{i}") as conn:
            for n in range(per_thread):
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} /* p3_insert */ VALUES (%s, %s, %s)", (i, n, n * n))
                    cur = conn.execute(
                        f"SELECT count(*), sum(sq) FROM {t} /* p3_select */ WHERE worker = %s", (i,)
                    )
                    assert cur.fetchone() == (n + 1, sum(k * k for k in range(n + 1)))
                    if n % 10 == 9:
                        # Prepared on the server this transaction landed on, whichever it is.
                        assert any("p3_select" in s for s in server_statements(cur, "p3_select"))

    with PeakWatcher() as watch:
        run_threads(THREADS, work)
    watch.assert_outnumbered(THREADS)
    after = stats()

    executions = THREADS * per_thread * 2
    binds = after["total_bind_count"] - before["total_bind_count"]
    parses = after["total_client_parse_count"] - before["total_client_parse_count"]
    # Every execution binds a named statement; each connection parses each text once (plus the
    # pg_prepared_statements check and the transaction commands psycopg prepares too).
    assert binds >= executions, (binds, executions)
    assert parses <= THREADS * 6, (parses, THREADS)

    with connect() as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT worker) FROM {t}").fetchone() == (
            THREADS * per_thread,
            THREADS,
        )


def test_default_threshold_prepares_after_five_executions():
    with connect() as conn:
        assert conn.prepare_threshold == 5
        before = stats()
        for i in range(40):
            with conn.transaction():
                row = conn.execute("SELECT %s::int * 3 /* p3_default */, %s::text", (i, f"x{i}")).fetchone()
                assert row == (i * 3, f"x{i}")
        after = stats()
    binds = after["total_bind_count"] - before["total_bind_count"]
    # The first five run unnamed, then it is prepared and every later execution binds it.
    assert binds >= 40 - 5, binds
    assert after["total_client_parse_count"] - before["total_client_parse_count"] <= 4


def test_one_text_with_different_parameter_types_is_prepared_once_per_type():
    # psycopg sends each parameter's type in Parse: "SELECT $1" as int8, text and float8 are three
    # statements, which must not be confused on a server that holds all three.
    def work(i):
        with connect(prepare_threshold=0) as conn:
            for n in range(20):
                with conn.transaction():
                    assert conn.execute("SELECT %s /* p3_types */", (i * 100 + n,)).fetchone() == (i * 100 + n,)
                    assert conn.execute("SELECT %s /* p3_types */", (f"s{n}",)).fetchone() == (f"s{n}",)
                    assert conn.execute("SELECT %s /* p3_types */", (n + 0.5,)).fetchone() == (n + 0.5,)

    run_threads(THREADS, work)


def test_explicit_prepare_true_on_many_connections():
    def work(i):
        with connect(autocommit=True) as conn:
            for n in range(50):
                row = conn.execute(
                    "SELECT %s::int + %s::int, repeat('z', %s::int)", (i, n, n % 7), prepare=True
                ).fetchone()
                assert row == (i + n, "z" * (n % 7))

    run_threads(THREADS, work)


@pytest.mark.parametrize(
    "deallocate,pipeline",
    [
        ("close", False),
        ("sql", False),
        ("close", True),
        ("sql", True),
    ],
    ids=["close-plain", "sql-plain", "close-pipeline", "sql-pipeline"],
)
def test_statements_psycopg_evicts_are_deallocated_and_prepared_again(monkeypatch, deallocate, pipeline):
    # psycopg keeps at most prepared_max statements and deallocates the least recently used: with
    # a protocol Close when libpq has PQsendClosePrepared (17+, as in psycopg-binary), with SQL
    # `DEALLOCATE _pg3_N` on older libpq (e.g. the system libpq of Debian 12 or Ubuntu 24.04).
    # Both reach sluice, which owns the client's names.
    if deallocate == "sql":
        monkeypatch.setattr(psycopg._connection_base, "_HAS_SEND_CLOSE", False)
    else:
        assert psycopg._connection_base._HAS_SEND_CLOSE
    texts = 30
    prepared_max = 8
    rounds = 3
    before = stats()
    with connect(prepare_threshold=0, autocommit=True) as conn:
        conn.prepared_max = prepared_max
        for r in range(rounds):
            if pipeline:
                with conn.pipeline():
                    cursors = [
                        conn.execute(f"SELECT %s::int + {k} /* p3_evict */", (100 * r,)) for k in range(texts)
                    ]
                got = [c.fetchone()[0] for c in cursors]
            else:
                got = [
                    conn.execute(f"SELECT %s::int + {k} /* p3_evict */", (100 * r,)).fetchone()[0]
                    for k in range(texts)
                ]
            assert got == [100 * r + k for k in range(texts)]
            assert len(conn._prepared._names) == prepared_max
    after = stats()
    # After the first round, the texts evicted were prepared afresh under new names (a pipeline
    # evicts when it ends, so its last prepared_max statements are still bound by name).
    parses = after["total_client_parse_count"] - before["total_client_parse_count"]
    assert parses >= texts + (rounds - 1) * (texts - prepared_max), parses


def test_sql_deallocate_of_protocol_level_statements_as_pdo_and_rails_send_it():
    # PHP PDO and Rails prepare through the protocol (Parse) and drop with SQL DEALLOCATE; libpq's
    # PQprepare / PQexecPrepared, as psycopg exposes them, do the same.
    name = b"pdo_stmt_00000001"
    with connect(autocommit=True) as conn:
        pgconn = conn.pgconn

        def prepare(text):
            res = pgconn.prepare(name, text)
            assert res.status == pq.ExecStatus.COMMAND_OK, res.error_message

        def run(*params):
            return pgconn.exec_prepared(name, [str(p).encode() for p in params])

        def value(res):
            assert res.status == pq.ExecStatus.TUPLES_OK, res.error_message
            return res.get_value(0, 0).decode()

        def missing(res):
            assert res.status == pq.ExecStatus.FATAL_ERROR
            assert res.error_field(pq.DiagnosticField.SQLSTATE) == b"26000", res.error_message
            return True

        prepare(b"SELECT $1::int * 7")
        for i in range(30):
            assert value(run(i)) == str(i * 7)
        assert conn.execute("DEALLOCATE pdo_stmt_00000001").statusmessage == "DEALLOCATE"
        assert missing(run(1))
        # The name is free again, for another text.
        prepare(b"SELECT $1::text || '!'")
        for i in range(30):
            assert value(run(f"x{i}")) == f"x{i}!"
        assert conn.execute("DEALLOCATE PREPARE pdo_stmt_00000001").statusmessage == "DEALLOCATE"
        assert missing(run("x"))
        # DEALLOCATE ALL and DISCARD ALL forget every statement of the client.
        for command in ["DEALLOCATE ALL", "DISCARD ALL"]:
            prepare(b"SELECT $1::int - 1")
            assert value(run(5)) == "4"
            conn.execute(command)
            assert missing(run(5))
        # An unknown name gets PostgreSQL's error.
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("DEALLOCATE pdo_never_prepared")


def test_pipeline_mode_batches_statements_and_returns_each_result():
    t = unique("p3_pipe")
    with connect(prepare_threshold=0) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY, v text)")
        conn.commit()
        with conn.pipeline():
            cursors = []
            for i in range(200):
                conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, f"v{i}"))
                cursors.append(conn.execute(f"SELECT v FROM {t} WHERE id = %s", (i,)))
        assert [c.fetchone() for c in cursors] == [(f"v{i}",) for i in range(200)]
        conn.commit()
        with conn.pipeline(), conn.cursor() as cur:
            cur.executemany(f"UPDATE {t} SET v = %s WHERE id = %s", [(f"u{i}", i) for i in range(0, 200, 2)])
            cur.execute(f"SELECT count(*) FROM {t} WHERE v LIKE 'u%%'")
            assert cur.fetchone() == (100,)
        conn.commit()
        assert conn.execute(f"SELECT count(*), min(v), max(v) FROM {t}").fetchone() == (200, "u0", "v99")


def test_pipeline_error_aborts_the_batch_and_the_connection_recovers():
    t = unique("p3_pipe_err")
    with connect(prepare_threshold=0, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int PRIMARY KEY)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            with conn.pipeline():
                with conn.transaction():
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (1,))
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (1,))
                    conn.execute(f"INSERT INTO {t} VALUES (%s)", (2,))
        assert conn.execute(f"SELECT count(*) FROM {t}").fetchone() == (0,)
        # The statements prepared in the failed pipeline are usable afterwards.
        for i in range(10, 20):
            with conn.pipeline():
                conn.execute(f"INSERT INTO {t} VALUES (%s)", (i,))
                conn.execute(f"INSERT INTO {t} VALUES (%s)", (i + 100,))
        assert conn.execute(f"SELECT count(*), sum(id) FROM {t}").fetchone() == (20, sum(range(10, 20)) * 2 + 1000)


def test_pipelines_on_threads_outnumbering_the_pool():
    t = unique("p3_pipe_thr")
    with connect(autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (worker int, n int)")

    def work(i):
        with connect(prepare_threshold=0) as conn:
            for batch in range(5):
                with conn.pipeline():
                    with conn.cursor() as cur:
                        cur.executemany(f"INSERT INTO {t} VALUES (%s, %s)", [(i, batch * 20 + n) for n in range(20)])
                    cur = conn.execute(f"SELECT count(*) FROM {t} WHERE worker = %s", (i,))
                conn.commit()
                assert cur.fetchone() == ((batch + 1) * 20,)

    run_threads(THREADS, work)
    with connect() as conn:
        assert conn.execute(f"SELECT count(*), count(DISTINCT (worker, n)) FROM {t}").fetchone() == (
            THREADS * 100,
            THREADS * 100,
        )


def test_schema_change_under_a_prepared_select_star():
    t = unique("p3_schema")
    with connect(prepare_threshold=0, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {t} (id int)")
        conn.execute(f"INSERT INTO {t} VALUES (1)")
        for _ in range(3):
            assert conn.execute(f"SELECT * FROM {t}").fetchall() == [(1,)]
        conn.execute(f"ALTER TABLE {t} ADD COLUMN extra text DEFAULT 'new'")
        # A server holding the old plan refuses it once ("cached plan must not change result
        # type"); sluice then prepares the statement afresh everywhere. psycopg describes the
        # portal at each execution, so it reads the new shape.
        refused = 0
        for _ in range(10):
            try:
                assert conn.execute(f"SELECT * FROM {t}").fetchall() == [(1, "new")]
            except psycopg.errors.FeatureNotSupported as e:
                assert "cached plan must not change result type" in str(e)
                refused += 1
        assert refused <= 1


def test_set_of_reported_parameters_follows_the_client_and_never_leaks_to_others():
    # TimeZone, DateStyle, IntervalStyle and application_name are reported by PostgreSQL
    # (ParameterStatus), so sluice applies a client's SET of them on every server it lands on, and
    # its own values on the next client of that server.
    wanted = ("Asia/Tokyo", "changed-by-set", "SQL, DMY", "iso_8601")
    query = (
        "SELECT current_setting('TimeZone'), current_setting('application_name'), "
        "current_setting('DateStyle'), current_setting('IntervalStyle'), pg_backend_pid()"
    )
    # (No startup parameters here: RESET of one is a known sluice gap, see test_asyncpg.py.)
    with connect(autocommit=True) as conn, connect(autocommit=True) as other:
        default = other.execute(query).fetchone()[:4]
        assert default[0] != wanted[0]
        conn.execute("SET TimeZone = 'Asia/Tokyo'")
        conn.execute("SET application_name = 'changed-by-set'")
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET IntervalStyle = 'iso_8601'")
        servers = set()
        for _ in range(200):
            row = conn.execute(query).fetchone()
            assert row[:4] == wanted
            servers.add(row[4])
            assert other.execute(query).fetchone()[:4] == default
        assert len(servers) >= 2, servers
        assert conn.execute("SELECT '2024-03-01 12:00:00+00'::timestamptz::text").fetchone() == (
            "01/03/2024 21:00:00 JST",
        )

        # A SET rolled back, a SET LOCAL, and RESET ALL leave nothing behind.
        conn.execute("RESET ALL")
        with conn.transaction(force_rollback=True):
            conn.execute("SET TimeZone = 'America/New_York'")
        with conn.transaction():
            conn.execute("SET LOCAL TimeZone = 'America/New_York'")
            assert conn.execute("SHOW TimeZone").fetchone() == ("America/New_York",)
        for _ in range(50):
            assert conn.execute(query).fetchone()[:4] == default


def test_copy_rows_in_and_out():
    t = unique("p3_copy")
    with connect() as conn:
        conn.execute(f"CREATE TABLE {t} (id int, label text, score float8)")
        with conn.cursor() as cur:
            with cur.copy(f"COPY {t} FROM STDIN") as copy:
                for i in range(10000):
                    copy.write_row((i, f"row {i}", i / 4))
        conn.commit()
        with conn.cursor() as cur:
            with cur.copy(f"COPY (SELECT id, label, score FROM {t} ORDER BY id) TO STDOUT") as copy:
                copy.set_types(["int4", "text", "float8"])
                rows = list(copy.rows())
        conn.commit()
    assert len(rows) == 10000
    assert rows[0] == (0, "row 0", 0.0)
    assert rows[-1] == (9999, "row 9999", 9999 / 4)


def test_sql_composition_and_identifiers():
    t = unique("p3_ident")
    with connect(autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} ({} int, {} text)").format(
            sql.Identifier(t), sql.Identifier("Mixed Case"), sql.Identifier("select")
        ))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (%s, %s)").format(sql.Identifier(t)), (7, "seven"))
        row = conn.execute(
            sql.SQL("SELECT {}, {} FROM {}").format(sql.Identifier("Mixed Case"), sql.Identifier("select"), sql.Identifier(t))
        ).fetchone()
        assert row == (7, "seven")


def test_async_connections_with_prepare_threshold_zero():
    t = unique("p3_async")

    async def main():
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
            await conn.execute(f"CREATE TABLE {t} (task int, n int)")

        async def task(i):
            async with await psycopg.AsyncConnection.connect(DSN, prepare_threshold=0) as conn:
                for n in range(10):
                    async with conn.transaction():
                        await conn.execute(f"INSERT INTO {t} VALUES (%s, %s)", (i, n))
                        cur = await conn.execute(f"SELECT count(*) FROM {t} WHERE task = %s", (i,))
                        assert await cur.fetchone() == (n + 1,)

        await asyncio.gather(*(task(i) for i in range(50)))
        async with await psycopg.AsyncConnection.connect(DSN) as conn:
            cur = await conn.execute(f"SELECT count(*), count(DISTINCT task) FROM {t}")
            return await cur.fetchone()

    assert asyncio.run(main()) == (500, 50)
