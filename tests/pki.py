"""A throwaway PKI for TLS tests: a CA, a broker certificate for 127.0.0.1/localhost signed
by it, a second unrelated CA, and a mosquitto password file."""

import os
import subprocess


def _openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d, users):
    """Write ca.pem, server.pem/key, other.pem and passwd (users: {name: password}) to d."""
    d.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=evse-test-ca", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
             "-keyout", "server.key", "-out", "server.csr", cwd=d)
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "2", "-extfile", "san.cnf", "-out", "server.pem",
             cwd=d)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
             "/CN=other-ca", "-keyout", "other.key", "-out", "other.pem", cwd=d)
    pw = d / "passwd"
    pw.write_text("")
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(pw), user, password], check=True)
    os.chmod(pw, 0o644)
    return d
