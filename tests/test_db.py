"""tools/db.py: the same SQL, parameters and transactions on SQLite and on PostgreSQL."""

import pytest

import db
import pgserver


@pytest.fixture(scope="module")
def pg():
    if not pgserver.available():
        pytest.skip("PostgreSQL server not installed (make test installs it as root)")
    s = pgserver.PgServer(db="dbtest")
    yield s
    s.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def conn(request, tmp_path):
    if request.param == "sqlite":
        d = db.connect("sqlite:///%s" % (tmp_path / "t.db"))
    else:
        d = db.connect(request.getfixturevalue("pg").url)
    d.execute("CREATE TABLE IF NOT EXISTS t (k INTEGER PRIMARY KEY, v TEXT)")
    d.execute("DELETE FROM t")
    yield d
    d.close()


def test_kind_follows_the_url(conn):
    assert conn.kind in ("sqlite", "postgresql")


def test_named_parameters_and_rows(conn):
    conn.execute("INSERT INTO t (k, v) VALUES (:k, :v)", k=1, v="a'b")
    assert conn.execute("SELECT k, v FROM t WHERE k = :k", k=1) == [(1, "a'b")]


def test_a_failed_transaction_leaves_nothing(conn):
    with pytest.raises(KeyError):
        with conn.transaction():
            conn.execute("INSERT INTO t (k, v) VALUES (:k, :v)", k=2, v="x")
            with conn.transaction():  # nested: part of the outer one
                conn.execute("INSERT INTO t (k, v) VALUES (:k, :v)", k=3, v="y")
            raise KeyError
    assert conn.execute("SELECT count(*) FROM t") == [(0,)]
    with conn.transaction():
        conn.execute("INSERT INTO t (k, v) VALUES (:k, :v)", k=2, v="x")
    assert conn.execute("SELECT k FROM t") == [(2,)]


def test_on_conflict_do_nothing_says_whether_it_inserted(conn):
    q = "INSERT INTO t (k, v) VALUES (:k, :v) ON CONFLICT (k) DO NOTHING RETURNING k"
    assert conn.execute(q, k=5, v="first") == [(5,)]
    assert conn.execute(q, k=5, v="second") == []
    assert conn.execute("SELECT v FROM t WHERE k = 5") == [("first",)]


def test_sqlite_urls(tmp_path):
    p = tmp_path / "x.db"
    for url in (str(p), "sqlite:///" + str(p)):
        d = db.connect(url)
        assert d.kind == "sqlite"
        d.close()
    assert p.exists()
    with pytest.raises(ValueError):
        db.connect("mysql://x/y")
