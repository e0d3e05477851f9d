"""SQLAlchemy 2 ORM through sluice in transaction mode, with NullPool (sluice does the pooling) and
with QueuePool + pool_pre_ping, on the psycopg2 and psycopg (3) drivers. Every session is a
`with Session() as s:` block. The asyncio extension on asyncpg (`async with Session() as s:`)
runs the same ORM with asyncpg's prepared statements."""

import asyncio

import pytest
from sqlalchemy import ForeignKey, String, create_engine, event, func, select, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, selectinload, sessionmaker
from sqlalchemy.pool import AsyncAdaptedQueuePool, NullPool, QueuePool

from conftest import DB, HOST, PASSWORD, PORT, THREADS, USER, PeakWatcher, admin, run_threads, unique, wait_for

DRIVERS = ["psycopg2", "psycopg"]
POOLS = ["nullpool", "queuepool_pre_ping"]


def models():
    """Fresh mapped classes on fresh, uniquely named tables."""

    class Base(DeclarativeBase):
        pass

    class Author(Base):
        __tablename__ = unique("sa_author")
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(100), unique=True)
        books: Mapped[list["Book"]] = relationship(back_populates="author", cascade="all, delete-orphan")

    class Book(Base):
        __tablename__ = unique("sa_book")
        id: Mapped[int] = mapped_column(primary_key=True)
        title: Mapped[str] = mapped_column(String(200))
        copies: Mapped[int] = mapped_column(default=0)
        author_id: Mapped[int] = mapped_column(ForeignKey(f"{Author.__tablename__}.id"))
        author: Mapped[Author] = relationship(back_populates="books")

    return Base, Author, Book


def make_engine(driver, pool, app):
    url = f"postgresql+{driver}://{USER}:{PASSWORD}@{HOST}:{PORT}/{DB}"
    connect_args = {"application_name": app, "connect_timeout": 10}
    if pool == "nullpool":
        return create_engine(url, poolclass=NullPool, connect_args=connect_args)
    # More pooled connections than sluice has servers.
    return create_engine(
        url,
        poolclass=QueuePool,
        pool_size=THREADS // 2,
        max_overflow=THREADS,
        pool_pre_ping=True,
        connect_args=connect_args,
    )


@pytest.fixture(params=[(d, p) for d in DRIVERS for p in POOLS], ids=lambda dp: f"{dp[0]}-{dp[1]}")
def setup(request):
    driver, pool = request.param
    engine = make_engine(driver, pool, unique("sa_app"))
    Base, Author, Book = models()
    Base.metadata.create_all(engine)
    Session = sessionmaker(engine)
    yield engine, Session, Author, Book
    Base.metadata.drop_all(engine)
    engine.dispose()


def test_orm_crud(setup):
    engine, Session, Author, Book = setup
    with Session() as s:
        s.add_all(
            [
                Author(name="Le Guin", books=[Book(title="The Dispossessed", copies=3), Book(title="Lathe", copies=1)]),
                Author(name="Lem", books=[Book(title="Solaris", copies=5)]),
            ]
        )
        s.commit()

    with Session() as s:
        authors = s.scalars(select(Author).order_by(Author.name)).all()
        assert [a.name for a in authors] == ["Le Guin", "Lem"]
        assert sorted(b.title for b in authors[0].books) == ["Lathe", "The Dispossessed"]
        assert s.scalar(select(func.sum(Book.copies))) == 9

    with Session() as s:
        book = s.scalars(select(Book).where(Book.title == "Solaris")).one()
        book.copies += 10
        s.delete(s.scalars(select(Book).where(Book.title == "Lathe")).one())
        s.commit()

    with Session() as s:
        rows = s.execute(select(Book.title, Book.copies).order_by(Book.title)).all()
        assert [tuple(r) for r in rows] == [("Solaris", 15), ("The Dispossessed", 3)]
        s.delete(s.scalars(select(Author).where(Author.name == "Lem")).one())
        s.commit()

    with Session() as s:
        assert s.scalars(select(Author.name)).all() == ["Le Guin"]
        assert s.scalar(select(func.count()).select_from(Book)) == 1


def test_rollback_discards_the_sessions_changes(setup):
    engine, Session, Author, Book = setup
    with Session() as s:
        s.add(Author(name="kept"))
        s.commit()

    with Session() as s:
        s.add(Author(name="never"))
        s.scalars(select(Author).where(Author.name == "kept")).one().name = "renamed"
        s.flush()
        assert s.scalar(select(func.count()).select_from(Author)) == 2
        s.rollback()

    with pytest.raises(Exception) as excinfo:
        with Session() as s, s.begin():
            s.add(Author(name="also never"))
            s.flush()
            s.add(Author(name="kept"))  # unique violation
            s.flush()
    assert "unique" in str(excinfo.value).lower()

    with Session() as s:
        assert s.scalars(select(Author.name)).all() == ["kept"]


def test_threads_outnumbering_the_pool_update_one_row_exactly(setup):
    engine, Session, Author, Book = setup
    with Session() as s:
        s.add(Author(name="counter", books=[Book(title="tally", copies=0)]))
        s.commit()
    per_thread = 10

    def work(i):
        for n in range(per_thread):
            with Session() as s, s.begin():
                book = s.scalars(select(Book).where(Book.title == "tally").with_for_update()).one()
                book.copies += 1
                s.add(Book(title=f"t{i}-{n}", author_id=book.author_id))

    with PeakWatcher() as watch:
        run_threads(THREADS, work)
    watch.assert_outnumbered(THREADS)

    with Session() as s:
        assert s.scalar(select(Book.copies).where(Book.title == "tally")) == THREADS * per_thread
        assert s.scalar(select(func.count()).select_from(Book)) == THREADS * per_thread + 1


def test_queuepool_pre_ping_replaces_connections_sluice_closed():
    app = unique("sa_preping")
    engine = make_engine("psycopg", "queuepool_pre_ping", app)
    connects = []
    event.listen(engine, "connect", lambda *args: connects.append(1))
    try:
        # Fill the pool with several connections and give them back. Each commits at once: a
        # connection left in its transaction keeps its server, and five would wait for a pool of 4.
        held = []
        for _ in range(5):
            c = engine.connect()
            held.append(c)
            assert c.execute(text("SELECT 1")).scalar() == 1
            c.commit()
        for c in held:
            c.close()
        assert len(connects) == 5

        # The pooler drops those clients (as on KILL or client_idle_timeout).
        clients = [r for r in admin("SHOW CLIENTS") if r["application_name"] == app]
        assert len(clients) == 5, clients
        for r in clients:
            admin(f"KILL_CLIENT {r['id']}")
        wait_for(lambda: not [r for r in admin("SHOW CLIENTS") if r["application_name"] == app], "killed clients gone")

        # pre_ping finds each dead connection on checkout and opens a new one: no error reaches us.
        held = []
        for i in range(5):
            c = engine.connect()
            held.append(c)
            assert c.execute(text("SELECT :i"), {"i": i}).scalar() == i
            c.commit()
        for c in held:
            c.close()
        assert len(connects) == 10
    finally:
        engine.dispose()


def test_nullpool_opens_and_closes_a_connection_per_session():
    app = unique("sa_nullpool")
    engine = make_engine("psycopg2", "nullpool", app)
    connects = []
    event.listen(engine, "connect", lambda *args: connects.append(1))
    seen_clients = []
    try:
        Session = sessionmaker(engine)
        for i in range(10):
            with Session() as s:
                assert s.execute(text("SELECT :i + 1"), {"i": i}).scalar() == i + 1
                seen_clients.append(len([r for r in admin("SHOW CLIENTS") if r["application_name"] == app]))
        assert len(connects) == 10
        # One client at sluice at a time, and none left afterwards.
        assert seen_clients == [1] * 10
        wait_for(lambda: not [r for r in admin("SHOW CLIENTS") if r["application_name"] == app], "clients gone")
    finally:
        engine.dispose()


def test_core_bulk_insert_and_server_side_defaults():
    engine = make_engine("psycopg", "nullpool", unique("sa_core"))
    t = unique("sa_core")
    try:
        with engine.begin() as conn:
            conn.execute(text(f"CREATE TABLE {t} (id serial PRIMARY KEY, v int, at timestamptz DEFAULT now())"))
            conn.execute(text(f"INSERT INTO {t} (v) VALUES (:v)"), [{"v": i} for i in range(3000)])
        with engine.connect() as conn:
            row = conn.execute(text(f"SELECT count(*), sum(v), count(at) FROM {t}")).one()
        assert tuple(row) == (3000, sum(range(3000)), 3000)
    finally:
        engine.dispose()



@pytest.mark.parametrize("pool", POOLS)
def test_asyncio_orm_on_asyncpg(pool):
    # SQLAlchemy's asyncpg dialect prepares every statement (asyncpg's own names, its own cache
    # of 100 per connection): the combination that fails on PgBouncer before 1.21.
    url = f"postgresql+asyncpg://{USER}:{PASSWORD}@{HOST}:{PORT}/{DB}"
    if pool == "nullpool":
        engine = create_async_engine(url, poolclass=NullPool)
    else:
        engine = create_async_engine(
            url,
            poolclass=AsyncAdaptedQueuePool,
            pool_size=THREADS // 2,
            max_overflow=THREADS,
            pool_pre_ping=True,
        )
    Base, Author, Book = models()
    tasks = 2 * THREADS
    per_task = 5

    async def main():
        try:
            return await scenario()
        finally:
            await engine.dispose()

    async def scenario():
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        Session = async_sessionmaker(engine, expire_on_commit=False)

        async with Session() as s:
            s.add_all(
                [
                    Author(name="Le Guin", books=[Book(title="The Dispossessed", copies=3), Book(title="Lathe", copies=1)]),
                    Author(name="Lem", books=[Book(title="Solaris", copies=5), Book(title="tally", copies=0)]),
                ]
            )
            await s.commit()

        async with Session() as s:
            authors = (await s.scalars(select(Author).options(selectinload(Author.books)).order_by(Author.name))).all()
            assert [a.name for a in authors] == ["Le Guin", "Lem"]
            assert sorted(b.title for b in authors[0].books) == ["Lathe", "The Dispossessed"]
            assert await s.scalar(select(func.sum(Book.copies))) == 9
            (await s.scalars(select(Book).where(Book.title == "Lathe"))).one().copies = 7
            await s.delete((await s.scalars(select(Book).where(Book.title == "The Dispossessed"))).one())
            await s.commit()

        # Rolled back: neither the insert nor the update stays.
        async with Session() as s:
            s.add(Author(name="never"))
            (await s.scalars(select(Book).where(Book.title == "Solaris"))).one().copies = 0
            await s.flush()
            await s.rollback()

        async def work(i):
            for _ in range(per_task):
                async with Session() as s, s.begin():
                    book = (await s.scalars(select(Book).where(Book.title == "tally").with_for_update())).one()
                    book.copies += 1

        with PeakWatcher() as watch:
            await asyncio.gather(*(work(i) for i in range(tasks)))
        watch.assert_outnumbered(THREADS)

        async with Session() as s:
            rows = (await s.execute(select(Book.title, Book.copies).order_by(Book.title))).all()
            names = (await s.scalars(select(Author.name).order_by(Author.name))).all()
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.drop_all)
        return [tuple(r) for r in rows], names

    rows, names = asyncio.run(main())
    assert rows == [("Lathe", 7), ("Solaris", 5), ("tally", tasks * per_task)]
    assert names == ["Le Guin", "Lem"]
