"""One small database layer for the fleet tools: SQLite (embedded, the default) or PostgreSQL
(shared by several workers), with the same SQL and `:name` parameters on both."""

import os
import re
import sqlite3
from contextlib import contextmanager

_PG = re.compile(
    r"^postgres(?:ql)?://(?:(?P<user>[^:@/]*)(?::(?P<pw>[^@/]*))?@)?"
    r"(?P<host>[^:/]*)(?::(?P<port>\d+))?/(?P<db>[^?]+)(?:\?(?P<q>.*))?$"
)


def connect(url):
    """A DB for `url`: a file path or sqlite:///PATH, or postgresql://USER:PW@HOST:PORT/DB
    (add ?unix_sock=DIR/.s.PGSQL.PORT to connect through a Unix socket)."""
    m = _PG.match(url)
    if m:
        return Postgres(m)
    if url.startswith("sqlite:///"):
        url = url[len("sqlite:///"):]  # sqlite:///rel.db, sqlite:////abs/path.db
    elif "://" in url:
        raise ValueError("unknown database URL %r (sqlite:///PATH or postgresql://...)" % url)
    return Sqlite(url)


class _Db:
    """What both have: transactions that nest (the outermost one commits)."""

    _depth = 0

    @contextmanager
    def transaction(self):
        if self._depth:
            self._depth += 1
            try:
                yield self
            finally:
                self._depth -= 1
            return
        self._run(self._BEGIN)
        self._depth = 1
        try:
            yield self
        except BaseException:
            self._depth = 0
            self._run("ROLLBACK")
            raise
        self._depth = 0
        self._run("COMMIT")

    def close(self):
        self.con.close()


class Sqlite(_Db):
    kind = "sqlite"
    # Two processes (the ledger worker and a fleet command) wait for each other instead of
    # failing: the write lock is taken at BEGIN.
    _BEGIN = "BEGIN IMMEDIATE"

    def __init__(self, path):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        # Autocommit outside transaction().
        self.con = sqlite3.connect(path, isolation_level=None, timeout=30.0,
                                   check_same_thread=False)
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=FULL")  # a committed record survives a power cut
        self.con.execute("PRAGMA busy_timeout=30000")

    def _run(self, sql):
        self.con.execute(sql)

    def execute(self, sql, **params):
        """Run one statement; the rows it returns (a list of tuples)."""
        return self.con.execute(sql, params).fetchall()


class Postgres(_Db):
    kind = "postgresql"
    _BEGIN = "BEGIN"

    def __init__(self, m):
        import pg8000.native

        kw = {"user": m.group("user") or os.environ.get("PGUSER") or "postgres",
              "database": m.group("db")}
        if m.group("pw"):
            kw["password"] = m.group("pw")
        q = dict(p.split("=", 1) for p in (m.group("q") or "").split("&") if "=" in p)
        if q.get("unix_sock"):
            kw["unix_sock"] = q["unix_sock"]
        else:
            kw["host"] = m.group("host") or "127.0.0.1"
            kw["port"] = int(m.group("port") or 5432)
        self.con = pg8000.native.Connection(**kw)

    def _run(self, sql):
        self.con.run(sql)

    def execute(self, sql, **params):
        return [tuple(r) for r in (self.con.run(sql, **params) or [])]
