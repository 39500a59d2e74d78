"""Fetch the MicroPython libraries the firmware imports (pinned sdists, sha256-checked) into lib/.

pip cannot install these sdists (they carry no setup.py), so this reads the package index's
simple API (PEP 503), downloads the pinned file, checks its hash and extracts only the modules.
"""

import argparse
import hashlib
import io
import os
import re
import sys
import tarfile
import urllib.request

INDEX = os.environ.get("MPYLIBS_INDEX", "https://pypi.org/simple")

# (project, version, sha256 of the sdist, {member path inside the sdist: path under lib/})
PINNED = (
    (
        "micropython-umqtt.simple",
        "1.3.4",
        "b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
        {"umqtt/simple.py": "umqtt/simple.py"},
    ),
    (
        "micropython-ulogging",
        "0.3",
        "a150c37ac0b8ebb3545cf4396b99c3f55f4e89eba2e5d460696d9ae4328e0675",
        {"ulogging.py": "ulogging.py"},
    ),
)


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _sdist_url(project, version):
    page = urllib.request.urlopen("%s/%s/" % (INDEX, _normalize(project)), timeout=60)
    html = page.read().decode()
    fname = "%s-%s.tar.gz" % (project, version)
    for href in re.findall(r'href="([^"]+)"', html):
        if href.split("#")[0].endswith("/" + fname):
            return href.split("#")[0]
    raise SystemExit("mpylibs: %s %s not found on %s" % (project, version, INDEX))


def fetch(dest, cache):
    os.makedirs(cache, exist_ok=True)
    for project, version, sha256, members in PINNED:
        if all(os.path.exists(os.path.join(dest, out)) for out in members.values()):
            stamp = os.path.join(dest, ".%s-%s" % (_normalize(project), version))
            if os.path.exists(stamp):
                continue
        cached = os.path.join(cache, "%s-%s.tar.gz" % (project, version))
        data = None
        if os.path.exists(cached):
            with open(cached, "rb") as f:
                data = f.read()
            if hashlib.sha256(data).hexdigest() != sha256:
                data = None
        if data is None:
            url = _sdist_url(project, version)
            data = urllib.request.urlopen(url, timeout=120).read()
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                raise SystemExit(
                    "mpylibs: sha256 mismatch for %s %s: got %s, want %s"
                    % (project, version, got, sha256)
                )
            with open(cached, "wb") as f:
                f.write(data)
        top = "%s-%s/" % (project, version)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member, out in members.items():
                src = tar.extractfile(top + member)
                path = os.path.join(dest, out)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "wb") as f:
                    f.write(src.read())
        open(os.path.join(dest, ".%s-%s" % (_normalize(project), version)), "w").close()
        print("mpylibs: %s %s -> %s" % (project, version, dest))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dest", default="lib")
    ap.add_argument("--cache", default=os.path.join(".venv", "mpylibs-cache"))
    args = ap.parse_args(argv)
    fetch(args.dest, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
