"""EV charge-point controller core: pilot, connector state machine, limits, config."""

VERSION = "0.1.0"
