"""A throwaway PostgreSQL server for tests and the fleet bench: initdb in a temp dir, listening
on 127.0.0.1 at a free port and on a Unix socket in that dir; stop() removes it all."""

import glob
import os
import shutil
import subprocess
import tempfile
import time

from broker import free_port


def pg_bin(name):
    """The path of a PostgreSQL server program, or None when the server is not installed."""
    p = shutil.which(name)
    if p:
        return p
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/" + name))
    return found[-1] if found else None


def available():
    return bool(pg_bin("initdb") and pg_bin("pg_ctl"))


class PgServer:
    def __init__(self, db="ledger"):
        self.dir = tempfile.mkdtemp(prefix="evse-pg-")
        data = os.path.join(self.dir, "data")
        self.user = "postgres"
        # As root the server refuses to run; the Debian packages' own user may.
        pre = []
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            pre = ["runuser", "-u", "postgres", "--"]
            shutil.chown(self.dir, "postgres")
        self._pre = pre
        subprocess.run(pre + [pg_bin("initdb"), "-D", data, "-U", self.user, "-A", "trust",
                              "--no-sync", "-E", "UTF8"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _attempt in range(5):
            self.port = free_port()
            opts = "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=on" % (self.port, self.dir)
            r = subprocess.run(pre + [pg_bin("pg_ctl"), "-D", data, "-o", opts, "-w", "-t", "30",
                                      "-l", os.path.join(self.dir, "log"), "start"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                break
        else:
            raise RuntimeError("postgres did not start: %s" % self.log())
        self.data = data
        self._createdb(db)
        self.url = "postgresql://%s@127.0.0.1:%d/%s" % (self.user, self.port, db)

    def _createdb(self, db):
        import pg8000.native

        end = time.monotonic() + 10
        while True:
            try:
                c = pg8000.native.Connection(self.user, host="127.0.0.1", port=self.port,
                                             database="postgres")
                break
            except Exception:
                if time.monotonic() > end:
                    raise
                time.sleep(0.1)
        c.run("CREATE DATABASE " + db)
        c.close()

    def log(self):
        try:
            with open(os.path.join(self.dir, "log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self):
        subprocess.run(self._pre + [pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate",
                                    "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
