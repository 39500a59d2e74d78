"""Which firmware is running: the modules frozen into the image, or files on flash.

On the ESP32 sys.path is ['', '.frozen', '/lib']: a file left on flash by a deploy (say
evse/connector.mpy) shadows the frozen module of the same name, silently. The boot says
which it runs, and diag reports it."""


def describe(modules, stat):
    """"frozen" (no firmware module from a file), "files" (all of them) or "mixed: a,b"
    (the ones from files). `modules`: name -> module; `stat`: os.stat."""
    files = []
    n = 0
    for name, mod in modules.items():
        if name != "evse" and not name.startswith("evse."):
            continue
        f = getattr(mod, "__file__", None)
        if not f:
            continue
        n += 1
        try:
            stat(f)  # a frozen module's __file__ names no file on the filesystem
            files.append(name)
        except OSError:
            pass
    if not files:
        return "frozen"
    if len(files) == n:
        return "files"
    files.sort()
    return "mixed: " + ",".join(files)


def running():
    import os
    import sys

    return describe(sys.modules, os.stat)
