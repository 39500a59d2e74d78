"""Non-blocking TCP sockets shared by the MQTT client and the Modbus TCP gateway port."""

import errno
import socket

# "Try again" errors of a non-blocking socket; 119 is EINPROGRESS on lwIP (ESP32).
IN_PROGRESS = (errno.EINPROGRESS, errno.EAGAIN, 119)


def close(s):
    """Close, ignoring the errors of an already broken socket."""
    if s is not None:
        try:
            s.close()
        except OSError:
            pass


def connect(host, port):
    """A socket whose connect has been started without waiting for it to finish.
    Name resolution (getaddrinfo) may still block: use an IP address where that matters."""
    ai = socket.getaddrinfo(host, port)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        s.connect(ai[-1])
    except OSError as e:
        if e.args[0] not in IN_PROGRESS:
            s.close()
            raise
    return s
