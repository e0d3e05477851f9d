"""Shared settings of the compatibility suite.

tests/compat.rs starts sluice (transaction mode, a pool of SLUICE_POOL_SIZE servers) and runs each
test file with these variables set:

    SLUICE_HOST, SLUICE_PORT          where sluice listens
    SLUICE_USER, SLUICE_PASSWORD      an application user (SCRAM)
    SLUICE_DB                         a fresh database only this file uses
    SLUICE_ADMIN_USER, SLUICE_ADMIN_PASSWORD   a user of sluice's admin console
    SLUICE_POOL_SIZE                  servers in the pool (every scenario runs more clients)

Scenarios name their tables with unique() so that they never share state. Throughout the
session, BACKGROUND_CLIENTS more clients run short transactions, so that every scenario runs with
more clients than servers and moves between servers.
"""

import itertools
import os
import sys
import threading
import time

import pytest

# The Django project (compat_project, compat_app) lives beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

HOST = os.environ.get("SLUICE_HOST", "127.0.0.1")
PORT = int(os.environ.get("SLUICE_PORT", "6432"))
USER = os.environ.get("SLUICE_USER", "sluice_scram")
PASSWORD = os.environ.get("SLUICE_PASSWORD", "scram_pw")
DB = os.environ.get("SLUICE_DB", "app")
ADMIN_USER = os.environ.get("SLUICE_ADMIN_USER", "admin")
ADMIN_PASSWORD = os.environ.get("SLUICE_ADMIN_PASSWORD", "")
POOL_SIZE = int(os.environ.get("SLUICE_POOL_SIZE", "4"))

# Client concurrency of the threaded scenarios: well above the pool.
THREADS = 20
assert THREADS > POOL_SIZE

# libpq keyword/value connection string.
DSN = f"host={HOST} port={PORT} user={USER} password={PASSWORD} dbname={DB} connect_timeout=10"
# URL form (asyncpg, SQLAlchemy).
URL = f"postgresql://{USER}:{PASSWORD}@{HOST}:{PORT}/{DB}"

_counter = itertools.count()
_counter_lock = threading.Lock()


def unique(prefix):
    """A table name no other scenario of this run uses."""
    with _counter_lock:
        n = next(_counter)
    return f"{prefix}_{os.getpid()}_{n}"


def admin_connect():
    """A connection to sluice's admin console (psycopg2: simple protocol, autocommit)."""
    import psycopg2

    conn = psycopg2.connect(
        host=HOST,
        port=PORT,
        user=ADMIN_USER,
        password=ADMIN_PASSWORD,
        dbname="pgbouncer",
        connect_timeout=10,
    )
    conn.autocommit = True
    return conn


def admin(command, conn=None):
    """Runs a command on sluice's admin console; rows as dicts."""
    own = conn is None
    if own:
        conn = admin_connect()
    try:
        with conn.cursor() as cur:
            cur.execute(command)
            if cur.description is None:
                return []
            names = [d.name for d in cur.description]
            return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        if own:
            conn.close()


def stats():
    """This database's row of SHOW STATS, values as ints."""
    rows = [r for r in admin("SHOW STATS") if r["database"] == DB]
    assert len(rows) == 1, rows
    return {k: int(v) for k, v in rows[0].items() if k != "database"}


def pool(conn=None):
    """This database's row of SHOW POOLS for USER."""
    rows = [r for r in admin("SHOW POOLS", conn) if r["database"] == DB and r["user"] == USER]
    assert len(rows) == 1, rows
    return rows[0]


SERVER_STATES = ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")


class PeakWatcher:
    """Samples SHOW POOLS in the background while a block runs: the most servers and the most
    clients seen, to show that the clients really outnumbered the pool."""

    def __init__(self, interval=0.02):
        self.interval = interval
        self.max_servers = 0
        self.max_clients = 0
        self.error = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self._sample()
        except BaseException as e:  # noqa: BLE001 - raised by assert_outnumbered
            self.error = e

    def _sample(self):
        conn = admin_connect()
        try:
            while not self._stop.is_set():
                p = pool(conn)
                servers = sum(int(p[k]) for k in SERVER_STATES)
                clients = int(p["cl_active"]) + int(p["cl_waiting"])
                self.max_servers = max(self.max_servers, servers)
                self.max_clients = max(self.max_clients, clients)
                self._stop.wait(self.interval)
        finally:
            conn.close()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def assert_outnumbered(self, clients_at_least):
        if self.error is not None:
            raise AssertionError(f"watching SHOW POOLS failed: {self.error!r}") from self.error
        assert self.max_servers <= POOL_SIZE, f"{self.max_servers} servers open, pool is {POOL_SIZE}"
        assert self.max_clients >= clients_at_least, (
            f"only {self.max_clients} clients seen at once, expected >= {clients_at_least}"
        )


def wait_for(condition, what, timeout=10.0):
    """Polls condition() every 20 ms until it is true; fails naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def run_threads(n, target):
    """Runs target(i) for i in range(n) on n threads started together; re-raises the first
    failure."""
    errors = []
    barrier = threading.Barrier(n)

    def body(i):
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append((i, e))

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        i, e = errors[0]
        raise AssertionError(f"thread {i} of {n} failed ({len(errors)} failed in all): {e!r}") from e


# Background clients: with them, every scenario (even one using a single connection) runs with
# more clients than the pool has servers, and its transactions move between servers. They use
# psycopg2's simple query protocol, so they leave SHOW STATS' parse and bind counts alone.
BACKGROUND_CLIENTS = POOL_SIZE + 2


@pytest.fixture(scope="session", autouse=True)
def background_clients():
    import psycopg2

    stop = threading.Event()
    errors = []
    iterations = [0] * BACKGROUND_CLIENTS

    def client(i):
        try:
            conn = psycopg2.connect(DSN, application_name=f"compat-background-{i}")
            try:
                while not stop.is_set():
                    with conn, conn.cursor() as cur:
                        cur.execute("SELECT pg_sleep(0.002), %s", (i,))
                        assert cur.fetchone()[1] == i
                    iterations[i] += 1
                    stop.wait(0.01)
            finally:
                conn.close()
        except BaseException as e:  # noqa: BLE001 - reported at the end of the session
            errors.append((i, e))

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(BACKGROUND_CLIENTS)]
    for t in threads:
        t.start()
    yield
    stop.set()
    for t in threads:
        t.join()
    assert not errors, f"background clients failed: {errors!r}"
    assert all(n > 0 for n in iterations), f"background clients stalled: {iterations}"
