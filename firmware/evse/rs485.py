"""A half-duplex RS-485 line: a UART behind a transceiver whose DE and /RE are one GPIO.

MicroPython's ESP32 UART has no RS-485 mode, so direction is ours to drive: DE high,
write, wait for the last stop bit (uart.flush()), DE low. DE must fall before the slave
answers (Modbus slaves wait at least 3.5 characters), and must not fall early or the end
of the request is cut off. The wait is the request's wire time, spent in the control loop:
a read request is 8 bytes, 8.3 ms at 9600 baud (33 ms at 2400), a few times a second per
meter; `make bench` measures the loop gap it costs. A board with an auto-direction
transceiver uses the UART directly and never waits."""


class Rs485:
    def __init__(self, uart, de):
        self._uart = uart
        self._de = de  # de(1) transmit, de(0) receive; a machine.Pin is callable so
        de(0)  # listen until a frame is sent

    def init(self, **kw):
        self._uart.init(**kw)

    def write(self, buf):
        self._de(1)
        try:
            n = self._uart.write(buf)
            self._uart.flush()  # returns after the last stop bit has left the shifter
        finally:
            self._de(0)  # whatever happened, never hold the bus
        return n

    def any(self):
        return self._uart.any()

    def readinto(self, mv):
        return self._uart.readinto(mv)
