"""Django 5 (on psycopg 3) through sluice in transaction mode: migrate, ORM CRUD,
transaction.atomic with rollback, select_for_update from threads outnumbering the pool,
bulk_create of 10k rows, and CONN_MAX_AGE 0 and 60 (see compat_project/settings.py for the
aliases)."""

import os
import threading
import time

import django
import pytest

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "compat_project.settings")
django.setup()

from django.core.management import call_command  # noqa: E402
from django.core.signals import request_finished, request_started  # noqa: E402
from django.db import IntegrityError, OperationalError, connections, transaction  # noqa: E402
from django.db.migrations.recorder import MigrationRecorder  # noqa: E402
from django.db.models import F, Max, Min, Sum  # noqa: E402

from compat_app.models import Author, Book, Counter, Item  # noqa: E402
from conftest import THREADS, PeakWatcher, admin, run_threads, stats, unique, wait_for  # noqa: E402

ALIASES = ["default", "persistent", "server_binding"]


@pytest.fixture(scope="module", autouse=True)
def migrated():
    call_command("migrate", "compat_app", database="default", interactive=False, verbosity=0)
    yield
    connections.close_all()


def clients_named(app):
    return [r for r in admin("SHOW CLIENTS") if r["application_name"] == app]


def test_migrate_created_the_tables_and_a_second_migrate_is_a_no_op():
    tables = set(connections["default"].introspection.table_names())
    assert {"compat_app_author", "compat_app_book", "compat_app_counter", "compat_app_item"} <= tables
    applied = MigrationRecorder(connections["default"]).applied_migrations()
    assert ("compat_app", "0001_initial") in applied
    call_command("migrate", "compat_app", database="default", interactive=False, verbosity=0)
    assert MigrationRecorder(connections["default"]).applied_migrations().keys() == applied.keys()


@pytest.mark.parametrize("alias", ALIASES)
def test_orm_crud(alias):
    tag = unique("crud")
    db = Author.objects.using(alias)
    le_guin = db.create(name=f"{tag} Le Guin")
    lem = db.create(name=f"{tag} Lem")
    Book.objects.using(alias).bulk_create(
        [
            Book(author=le_guin, title="The Dispossessed", copies=3, data={"tags": ["anarchy", "physics"]}),
            Book(author=le_guin, title="Lathe of Heaven", copies=1, data={"tags": ["dreams"]}),
            Book(author=lem, title="Solaris", copies=5, data={"tags": ["ocean"]}),
        ]
    )
    books = Book.objects.using(alias).filter(author__name__startswith=tag)

    assert list(books.order_by("title").values_list("author__name", "title", "copies")) == [
        (f"{tag} Le Guin", "Lathe of Heaven", 1),
        (f"{tag} Lem", "Solaris", 5),
        (f"{tag} Le Guin", "The Dispossessed", 3),
    ]
    assert books.aggregate(total=Sum("copies"))["total"] == 9
    assert list(books.filter(data__tags__contains=["physics"]).values_list("title", flat=True)) == [
        "The Dispossessed"
    ]
    assert db.get(pk=le_guin.pk).books.count() == 2

    assert books.filter(author=le_guin).update(copies=F("copies") + 10) == 2
    solaris = books.get(title="Solaris")
    solaris.title = "Solaris (1961)"
    solaris.save()
    assert sorted(books.values_list("title", "copies")) == [
        ("Lathe of Heaven", 11),
        ("Solaris (1961)", 5),
        ("The Dispossessed", 13),
    ]

    deleted, per_model = db.get(pk=le_guin.pk).delete()
    assert deleted == 3
    assert per_model == {"compat_app.Book": 2, "compat_app.Author": 1}
    assert list(db.filter(name__startswith=tag).values_list("name", flat=True)) == [f"{tag} Lem"]
    assert books.count() == 1


@pytest.mark.parametrize("alias", ALIASES)
def test_atomic_rollback_really_rolls_back(alias):
    tag = unique("atomic")
    db = Author.objects.using(alias)

    with pytest.raises(RuntimeError):
        with transaction.atomic(using=alias):
            db.create(name=f"{tag} exception")
            assert db.filter(name__startswith=tag).count() == 1
            raise RuntimeError("roll back")

    with transaction.atomic(using=alias):
        db.create(name=f"{tag} outer")
        with pytest.raises(IntegrityError):
            with transaction.atomic(using=alias):
                db.create(name=f"{tag} savepoint")
                db.create(name=f"{tag} outer")  # unique violation: the savepoint rolls back
        db.create(name=f"{tag} after")

    with transaction.atomic(using=alias):
        db.create(name=f"{tag} set_rollback")
        transaction.set_rollback(True, using=alias)

    assert sorted(db.filter(name__startswith=tag).values_list("name", flat=True)) == [
        f"{tag} after",
        f"{tag} outer",
    ]


@pytest.mark.parametrize("alias", ALIASES)
def test_select_for_update_from_threads_gives_the_exact_total(alias):
    name = unique("counter")
    Counter.objects.using(alias).create(name=name)
    per_thread = 10

    def work(i):
        try:
            for _ in range(per_thread):
                with transaction.atomic(using=alias):
                    counter = Counter.objects.using(alias).select_for_update().get(name=name)
                    counter.value += 1
                    counter.save(update_fields=["value"])
        finally:
            connections.close_all()

    with PeakWatcher() as watch:
        run_threads(THREADS, work)
    watch.assert_outnumbered(THREADS)
    assert Counter.objects.using(alias).get(name=name).value == THREADS * per_thread


@pytest.mark.parametrize("alias", ALIASES)
def test_select_for_update_blocks_until_the_lock_holder_commits(alias):
    name = unique("locked")
    Counter.objects.using(alias).create(name=name)
    locked = threading.Event()
    release = threading.Event()
    waited = {}

    def holder():
        try:
            with transaction.atomic(using=alias):
                counter = Counter.objects.using(alias).select_for_update().get(name=name)
                counter.value = 41
                counter.save(update_fields=["value"])
                locked.set()
                release.wait(30)
        finally:
            connections.close_all()

    def waiter():
        try:
            with transaction.atomic(using=alias):
                start = time.monotonic()
                counter = Counter.objects.using(alias).select_for_update().get(name=name)
                waited["seconds"] = time.monotonic() - start
                waited["value"] = counter.value
                counter.value += 1
                counter.save(update_fields=["value"])
        finally:
            connections.close_all()

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    try:
        assert locked.wait(30)
        # While the row is locked: NOWAIT fails at once, SKIP LOCKED sees nothing.
        with pytest.raises(OperationalError, match="could not obtain lock"):
            with transaction.atomic(using=alias):
                Counter.objects.using(alias).select_for_update(nowait=True).get(name=name)
        with transaction.atomic(using=alias):
            assert not Counter.objects.using(alias).select_for_update(skip_locked=True).filter(name=name).exists()
        # A plain SELECT ... FOR UPDATE waits for the holder.
        threads.append(threading.Thread(target=waiter))
        threads[1].start()
        time.sleep(0.5)
        assert threads[1].is_alive() and not waited, "select_for_update did not wait for the lock"
    finally:
        release.set()
        for t in threads:
            t.join()
    # The waiter read the holder's committed value once the lock was released.
    assert waited["value"] == 41 and waited["seconds"] >= 0.4, waited
    assert Counter.objects.using(alias).get(name=name).value == 42


@pytest.mark.parametrize("alias", ALIASES)
def test_bulk_create_10k_rows(alias):
    batch = unique("bulk")
    created = Item.objects.using(alias).bulk_create(
        [Item(batch=batch, seq=i, label=f"item {i}") for i in range(10000)]
    )
    assert len(created) == 10000
    assert len({item.pk for item in created}) == 10000  # ids came back (RETURNING)
    rows = Item.objects.using(alias).filter(batch=batch)
    assert rows.count() == 10000
    assert rows.aggregate(s=Sum("seq"), lo=Min("seq"), hi=Max("seq")) == {"s": 49995000, "lo": 0, "hi": 9999}
    assert rows.get(seq=4321).label == "item 4321"
    # iterator() without server-side cursors (DISABLE_SERVER_SIDE_CURSORS) reads in chunks.
    seqs = list(rows.order_by("seq").values_list("seq", flat=True).iterator(chunk_size=1000))
    assert seqs == list(range(10000))
    assert rows.filter(seq__lt=5000).delete()[0] == 5000
    assert rows.count() == 5000


def in_request(body):
    """Runs body() the way a request does: Django's request signals close obsolete
    connections before and after it (CONN_MAX_AGE)."""
    request_started.send(sender=None)
    try:
        return body()
    finally:
        request_finished.send(sender=None)


@pytest.mark.parametrize("alias,max_age", [("default", 0), ("persistent", 60), ("server_binding", 60)])
def test_conn_max_age(alias, max_age):
    assert connections[alias].settings_dict["CONN_MAX_AGE"] == max_age
    app = f"compat-django-{alias}"
    connections[alias].close()
    wait_for(lambda: not clients_named(app), f"no {app} client at sluice")
    tag = unique("maxage")
    db = Author.objects.using(alias)
    used = []  # the psycopg connections each request used (kept alive so that ids stay unique)

    for i in range(8):

        def body():
            db.create(name=f"{tag} {i}")
            used.append(connections[alias].connection)
            return db.filter(name__startswith=tag).count()

        assert in_request(body) == i + 1
        if max_age == 0:
            assert connections[alias].connection is None
            wait_for(lambda: not clients_named(app), f"{app} client to leave sluice after the request")
        else:
            assert connections[alias].connection is used[0]
            assert len(clients_named(app)) == 1

    distinct = len({id(c) for c in used})
    assert distinct == (8 if max_age == 0 else 1)
    connections[alias].close()


def test_server_side_binding_runs_repeated_queries_as_prepared_statements():
    tag = unique("binding")
    db = Author.objects.using("server_binding")
    for i in range(20):
        db.create(name=f"{tag} {i}")
    before = stats()
    for i in range(30):
        with transaction.atomic(using="server_binding"):
            assert db.filter(name=f"{tag} {i % 20}").values_list("name", flat=True).get() == f"{tag} {i % 20}"
    after = stats()
    # Prepared once on this connection (the SELECT, and SAVEPOINT-free atomic blocks have no other
    # statements), then bound by name in every transaction, on whichever server it runs.
    assert after["total_bind_count"] - before["total_bind_count"] >= 30
    assert after["total_client_parse_count"] - before["total_client_parse_count"] <= 1


def test_server_side_cursor_iterator_inside_atomic_while_other_clients_hold_servers():
    batch = unique("cursor")
    Item.objects.using("default").bulk_create([Item(batch=batch, seq=i, label=f"c{i}") for i in range(5000)])
    stop = threading.Event()

    def busy(_):
        try:
            while not stop.is_set():
                with transaction.atomic(using="default"):
                    Counter.objects.using("default").exists()
        finally:
            connections.close_all()

    background = threading.Thread(target=run_threads, args=(6, busy))
    background.start()
    try:
        with transaction.atomic(using="server_cursors"):
            rows = Item.objects.using("server_cursors").filter(batch=batch).order_by("seq")
            seqs = [item.seq for item in rows.iterator(chunk_size=100)]  # DECLARE, then 50 FETCHes
    finally:
        stop.set()
        background.join()
    assert seqs == list(range(5000))
