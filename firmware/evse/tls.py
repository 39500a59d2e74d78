"""TLS for the MQTT link: an SSL context that verifies the broker against a CA on flash."""


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


def context(station):
    """SSLContext for the configured CA file (PEM or DER) under the board's flash root."""
    import ssl

    path = station.board.fs + "/" + station.cfg["mqtt.ca_file"]
    with open(path, "rb") as f:
        ca = f.read()
    if ca.startswith(b"-----"):
        ca = pem_to_der(ca)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    return ctx
