"""Layer 1: CP classification, debounce and the duty <-> current tables."""

import pytest

from evse import pilot
from evse.pilot import A, B, C, D, E, F, classify


@pytest.mark.parametrize(
    "mv,prev,want",
    [
        (13500, A, E),  # above the A band: broken generator, never "no EV"
        (13000, A, A),
        (12000, B, A),
        (11000, B, A),
        (10999, A, A),  # 10-11 V gap: stays A when it was A
        (10500, B, B),  # ... and B otherwise
        (10000, A, A),
        (9999, A, B),
        (9000, C, B),
        (8000, C, B),
        (7999, B, B),  # 7-8 V gap: B when coming from A/B
        (7500, A, B),
        (7500, C, C),  # ... C otherwise
        (7500, D, C),
        (7000, C, C),
        (6000, B, C),
        (5000, B, C),
        (4999, C, C),  # 4-5 V gap: C when coming from A/B/C
        (4500, B, C),
        (4500, D, D),  # ... D otherwise
        (4000, D, D),
        (3000, C, D),
        (2000, C, D),
        (1999, C, E),
        (0, C, E),
        (-2000, C, E),
        (-2001, C, F),
        (-12000, A, F),
    ],
)
def test_classify_bands_and_hysteresis(mv, prev, want):
    assert classify(mv, prev) == want


def test_detector_needs_two_samples_and_ignores_single_glitch():
    d = pilot.Detector()
    assert d.feed(12000, 12000) == A
    assert d.feed(9000, -12000) == A  # first sample of B: not yet
    assert d.feed(9000, -12000) == B
    assert d.feed(6000, -12000) == B
    assert d.feed(9000, -12000) == B  # one-sample C glitch is dropped
    assert d.feed(6000, -12000) == B
    assert d.feed(6000, -12000) == C


def test_diode_check_threshold():
    d = pilot.Detector()
    d.feed(9000, -12000)
    assert d.diode_ok()
    d.feed(9000, -10000)
    assert d.diode_ok()
    d.feed(9000, -9000)
    assert not d.diode_ok()


@pytest.mark.parametrize(
    "amps,duty",
    [
        (6, 10.0),
        (10, 16.667),
        (13, 21.667),
        (16, 26.667),
        (20, 33.333),
        (32, 53.333),
        (40, 66.667),
        (51, 85.0),
        (52, 85.0),  # the norm's 51-52.5 A gap clamps to 51 A
        (63, 89.2),
        (80, 96.0),
        (100, 96.0),  # above 80 A: clamp
    ],
)
def test_duty_table(amps, duty):
    assert pilot.duty_pct(amps) == pytest.approx(duty, abs=0.001)


@pytest.mark.parametrize("amps", [None, -1, 0, 5.9])
def test_no_duty_below_6a(amps):
    assert pilot.duty_pct(amps) is None
    assert pilot.duty_u16(amps) is None
    assert pilot.offered_a(pilot.duty_u16(amps)) == 0.0


@pytest.mark.parametrize("amps", [6, 10, 13, 16, 20, 32, 40, 51, 63, 70, 80])
def test_duty_u16_round_trip(amps):
    assert pilot.offered_a(pilot.duty_u16(amps)) == pytest.approx(amps, abs=0.05)


def test_52a_offers_51a():
    assert pilot.offered_a(pilot.duty_u16(52)) == 51.0


@pytest.mark.parametrize(
    "ohms,amps",
    [(None, 0.0), (50, 0.0), (100, 63.0), (150, 32.0), (220, 32.0), (350, 20.0),
     (680, 20.0), (1000, 13.0), (1500, 13.0), (4600, 0.0)],
)
def test_pp_cable_coding(ohms, amps):
    from evse.pp import cable_a

    assert cable_a(ohms) == amps
