"""Issue 16 with real applications: a SQLAlchemy application that leaks sessions (begun, never
committed or closed) pins every server of the pool, while a healthy psycopg2 application with
THREADS threads runs short transactions on the same pool.

tests/compat.rs runs this file against a sluice with max_pool_share = 0.5 and
idle_transaction_reclaim_timeout = 1s (and query_wait_timeout = 5s): the leaker's idle
transactions are rolled back while the healthy application waits, the leaker is told why the
next time it speaks, and the healthy application sees no error at all.
"""

import threading
import time

import psycopg2
import pytest
from sqlalchemy import create_engine, exc, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from conftest import DB, DSN, HOST, PASSWORD, POOL_SIZE, PORT, THREADS, USER, admin

# How long the healthy application runs against the leaker.
HEALTHY_SECONDS = 8.0
RECLAIM_AFTER = 1.0
QUERY_WAIT_TIMEOUT = 5.0


@pytest.fixture(scope="session", autouse=True)
def background_clients():
    """No background clients here (this overrides conftest's): "nobody waits" must be true
    while the leaker sits idle, so that nothing may be reclaimed then."""
    yield


def leaky_sessions(n):
    """n SQLAlchemy sessions that each began a transaction and were then forgotten, as a web
    request handler that never closes its session leaves them."""
    engine = create_engine(
        f"postgresql+psycopg2://{USER}:{PASSWORD}@{HOST}:{PORT}/{DB}",
        poolclass=NullPool,
        connect_args={"application_name": "leaky", "connect_timeout": 10},
    )
    sessions = []
    for _ in range(n):
        s = Session(engine)
        s.execute(text("SELECT 1"))  # autobegin: the transaction stays open
        sessions.append(s)
    return engine, sessions


def healthy_application(seconds):
    """THREADS threads of short transactions for `seconds`; returns (latencies, errors)."""
    latencies, errors = [], []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def worker(i):
        conn = psycopg2.connect(DSN, application_name="healthy")
        try:
            while time.monotonic() < deadline:
                began = time.monotonic()
                try:
                    with conn, conn.cursor() as cur:
                        cur.execute("SELECT %s", (i,))
                        assert cur.fetchone()[0] == i
                except psycopg2.Error as e:
                    with lock:
                        errors.append(f"{e.pgcode} {e}".strip())
                    if conn.closed:
                        conn = psycopg2.connect(DSN, application_name="healthy")
                    continue
                with lock:
                    latencies.append(time.monotonic() - began)
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, errors


def reclaimed_for(app):
    rows = [r for r in admin("SHOW LEAKS_SUMMARY") if r["application_name"] == app]
    return sum(int(r["reclaimed_transactions"]) for r in rows)


def test_a_leaking_sqlalchemy_app_is_reclaimed_and_a_healthy_psycopg2_app_sees_no_error():
    engine, leaked = leaky_sessions(POOL_SIZE)
    try:
        # The leaker holds every server, idle in a transaction (each session's SELECT returned
        # inside its open transaction). Nobody waits yet: nothing is reclaimed, however long the transactions sit idle.
        time.sleep(RECLAIM_AFTER * 2)
        assert reclaimed_for("leaky") == 0

        latencies, errors = healthy_application(HEALTHY_SECONDS)
        latencies.sort()
        p99 = latencies[int(len(latencies) * 0.99)] if latencies else None
        print(
            f"healthy: {len(latencies)} transactions, {len(errors)} errors, "
            f"p99 {p99 * 1000 if p99 is not None else float('nan'):.1f} ms"
        )
        assert errors == [], f"the healthy application failed {len(errors)} times: {errors[:5]}"
        assert len(latencies) > THREADS * 10, f"the healthy application barely ran: {len(latencies)}"
        assert p99 < QUERY_WAIT_TIMEOUT

        # Every leaked session lost its server while the healthy application waited, and hears
        # why the next time it speaks.
        assert reclaimed_for("leaky") == POOL_SIZE
        told = []
        for s in leaked:
            try:
                s.execute(text("SELECT 1"))
                told.append("no error")
            except exc.DBAPIError as e:
                told.append(f"{type(e.orig).__name__}: {e.orig}")
        print("the leaker was told:", told)
        why = [t for t in told if "idle_transaction_reclaim_timeout" in t]
        if len(why) != POOL_SIZE:
            raise AssertionError(f"each leaked session should hear why: {told}")
    finally:
        for s in leaked:
            try:
                s.close()
            except exc.DBAPIError:
                pass
        engine.dispose()
