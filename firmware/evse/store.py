"""Flash storage: atomic JSON files under the board's flash root."""

import json
import os


class Store:
    """Files under one root; writes are atomic (temp file, flush, rename)."""

    def __init__(self, root, write=None):
        self.root = root
        if write is not None:
            self.write = write  # the board's flash_write

    @staticmethod
    def write(f, data):
        f.write(data)

    def path(self, name):
        return self.root + "/" + name

    def read_json(self, name):
        """The decoded file, None if absent. Raises ValueError if it is corrupt."""
        p = self.path(name)
        try:
            f = open(p)
        except OSError:
            return None
        with f:
            return json.loads(f.read())

    def write_json(self, name, obj):
        p = self.path(name)
        tmp = p + ".tmp"
        with open(tmp, "w") as f:
            self.write(f, json.dumps(obj))
            f.flush()
        # rename over an existing file is atomic on POSIX and on LittleFS (ESP32's default).
        os.rename(tmp, p)

    def rename(self, name, new_name):
        os.rename(self.path(name), self.path(new_name))
