"""TLS for the MQTT link: an SSL context that verifies the broker against a CA on flash."""


def context(station):
    """SSLContext for the configured CA file (PEM or DER) under the board's flash root."""
    import ssl

    path = station.board.fs + "/" + station.cfg["mqtt.ca_file"]
    with open(path, "rb") as f:
        ca = f.read()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca)
    return ctx
