"""TLS for the MQTT link: an SSL context that verifies the broker against a CA on flash, and
a paced handshake that hands the control loop back between its steps."""

import io

from evse.sock import IN_PROGRESS

_POLL = 3  # MP_STREAM_POLL (py/stream.h)
_CLOSE = 4  # MP_STREAM_CLOSE


def pem_to_der(data):
    """The first certificate of a PEM file as DER (MicroPython's mbedTLS binding takes DER)."""
    import binascii

    text = data.decode()
    begin = text.find("-----BEGIN CERTIFICATE-----")
    end = text.find("-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        raise ValueError("no PEM certificate")
    body = text[begin + 27 : end].replace("\r", "").replace("\n", "")
    return binascii.a2b_base64(body)


class Paced(io.IOBase):
    """The TCP socket under the TLS session, as mbedTLS sees it.

    MicroPython's ssl (extmod/modssl_mbedtls.c) drives the handshake from inside the
    wrapped socket's write() and readinto() when created with do_handshake_on_connect=False:
    each call runs mbedtls_ssl_handshake steps until one needs I/O the non-blocking socket
    cannot do yet (WANT_READ/WANT_WRITE, returned as EAGAIN). The crypto runs with the GIL
    held, so no thread can take it off the loop; what arrives in one piece runs in one call:
    the server's whole first flight (certificate chain check, key-exchange signature check)
    and then the client's key exchange (ECDHE) and Finished.

    So while pacing, each control-loop pass (turn()) lets one read and one write through
    that move bytes; the next one says "would block" and mbedTLS returns to the loop. A
    step then holds at most one TLS record's work: a record read takes two passes (header,
    body), and the longest remaining step is one handshake message's crypto (docs/mqtt.md,
    TLS). After the CONNACK the link stops pacing.

    Errors are never raised through mbedTLS: a failed read reports end of stream (mbedTLS
    fails the session), a failed write reports "would block" and the next read fails it."""

    def __init__(self, raw):
        self.raw = raw
        self.paced = True
        self._reads = 1
        self._writes = 1
        self.error = None  # the socket error that ended the session
        self._poller = None

    def turn(self):
        self._reads = self._writes = 1

    def readinto(self, buf):
        if self.error is not None:
            return 0
        if self.paced and not self._reads:
            return None
        try:
            n = self.raw.readinto(buf)
        except OSError as e:
            if e.args[0] in IN_PROGRESS:
                return None
            self.error = e
            return 0
        except Exception as e:  # noqa: BLE001 - nothing may unwind through mbedTLS
            self.error = e
            return 0
        if n and self.paced:
            self._reads -= 1
        return n

    def write(self, buf):
        if self.error is not None or self.paced and not self._writes:
            return None
        try:
            n = self.raw.write(buf)
        except OSError as e:
            if e.args[0] not in IN_PROGRESS:
                self.error = e
            return None
        except Exception as e:  # noqa: BLE001
            self.error = e
            return None
        if n and self.paced:
            self._writes -= 1
        return n

    def setblocking(self, flag):
        self.raw.setblocking(flag)

    def close(self):
        self.raw.close()

    def ioctl(self, req, arg):
        if req == _CLOSE:
            try:
                self.raw.close()
            except OSError:
                pass
            return 0
        if req == _POLL:
            import select

            if self._poller is None:
                self._poller = select.poll()
                self._poller.register(self.raw, select.POLLIN | select.POLLOUT)
            ev = self._poller.poll(0)
            return (ev[0][1] & arg) if ev else 0
        return 0


class Context:
    """An SSLContext whose sockets are paced (Paced). The MQTT client calls wrap_socket();
    the link calls turn() once per control-loop pass while connecting and release() after
    the CONNACK."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.stream = None

    def wrap_socket(self, sock, server_hostname=None, do_handshake_on_connect=True):
        self.stream = Paced(sock)
        return self.ctx.wrap_socket(self.stream, server_hostname=server_hostname,
                                    do_handshake_on_connect=do_handshake_on_connect)

    def turn(self):
        if self.stream is not None:
            self.stream.turn()

    def release(self):
        if self.stream is not None:
            self.stream.paced = False


def context(station):
    """Context for the configured CA file (PEM or DER) under the board's flash root."""
    import ssl

    path = station.board.fs + "/" + station.cfg["mqtt.ca_file"]
    with open(path, "rb") as f:
        ca = f.read()
    if ca.startswith(b"-----"):
        ca = pem_to_der(ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    return Context(ctx)
