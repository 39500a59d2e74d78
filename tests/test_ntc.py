"""The board NTC: the two-range divider's conversion (evse.thermal.Ntc, pure, CPython) from
-40 to +75 C, open and short, and the simulated world's divider + ESP32 ADC model that
feeds it on the simulator (tools/simworld.py)."""

import math

import pytest

import simworld
from evse import thermal
from evse.thermal import Ntc, ntc_c

# The reference circuit, restated from boards/esp32_devkitc/README.md (Temperature), so the
# test checks the code against the documented wiring rather than against itself.
R25, BETA, VCC_UV = 10000, 3950, 3300000
COLD_PULLUP = 150000
HOT_PULLUP = 150000 * 4700 / (150000 + 4700)
ADC_FLOOR_UV, ADC_CLIP_UV = 142000, 3135000  # read_uv() at raw 0 / raw 4095 (11 dB)


def node_uv(temp_c, cold):
    r = R25 * math.exp(BETA * (1 / (temp_c + 273.15) - 1 / 298.15))
    pull = COLD_PULLUP if cold else HOT_PULLUP
    return VCC_UV * r / (r + pull)


def read_uv(v):
    return int(min(max(v, ADC_FLOOR_UV), ADC_CLIP_UV))


def settle(ntc, reading, reads=4):
    """Drive an Ntc as a board does (one reading every 250 ms in the range it selects);
    return the values it reported."""
    out = []
    now = 0
    for _ in range(reads):
        now += 250
        out.append(ntc.update(reading(ntc.cold), now))
    return out


@pytest.mark.parametrize("temp_c", [-40, -30, -26, 0, 25, 60, 75])
def test_reads_minus_40_to_75_c(temp_c):
    ntc = Ntc()
    got = settle(ntc, lambda cold: read_uv(node_uv(temp_c, cold)))
    assert got[-1] == pytest.approx(temp_c, abs=0.2), got
    # The divider puts every one of these inside the ADC's linear span in its final range.
    assert 150000 <= node_uv(temp_c, ntc.cold) <= thermal.ADC_LINEAR_MAX_UV


@pytest.mark.parametrize("temp_c", [-40, -30])
def test_cold_never_reads_as_open(temp_c):
    """The old single 10 kOhm divider saturated the ADC below -26 C and reported "open"."""
    ntc = Ntc()
    got = settle(ntc, lambda cold: read_uv(node_uv(temp_c, cold)), reads=10)
    assert ntc.cold and got[-1] == pytest.approx(temp_c, abs=0.2)


def test_open_sensor_raises_after_the_cold_range_confirms_it():
    ntc = Ntc()
    assert ntc.update(read_uv(node_uv(25, False)), 0) == 25.0
    # Open: the node goes to 3.3 V, the ADC clips. In the hot range that could be cold ...
    assert ntc.update(ADC_CLIP_UV, 250) == 25.0  # last good value while the range changes
    assert ntc.cold
    with pytest.raises(OSError, match="open"):
        ntc.update(ADC_CLIP_UV, 500)  # ... in the cold range it can only be a missing sensor


def test_shorted_sensor_raises():
    ntc = Ntc()
    with pytest.raises(OSError, match="short"):
        ntc.update(ADC_FLOOR_UV, 0)
    # From the cold range a short (or heat) first switches to the hot range.
    ntc = Ntc()
    settle(ntc, lambda cold: read_uv(node_uv(-10, cold)))
    assert ntc.cold
    assert ntc.update(ADC_FLOOR_UV, 5000) == -10.0 and not ntc.cold
    with pytest.raises(OSError, match="short"):
        ntc.update(ADC_FLOOR_UV, 5250)


def test_waits_for_the_node_to_settle_after_a_range_change():
    from evse.compat import ticks_diff

    ntc = Ntc()
    ntc.update(read_uv(node_uv(10, False)), 1000)  # 10 C: below 22 C, to the cold range
    assert ntc.cold
    assert not ntc.settled(1000 + thermal.NTC_SETTLE_MS - 1, ticks_diff)
    assert ntc.settled(1000 + thermal.NTC_SETTLE_MS, ticks_diff)


def test_range_hysteresis_does_not_chatter():
    """Around the change-over (22-26 C) a steady temperature keeps one range."""
    for temp_c in (21.0, 23.0, 24.0, 25.0, 27.0):
        ntc = Ntc()
        settle(ntc, lambda cold, t=temp_c: read_uv(node_uv(t, cold)), reads=3)
        ranges = []
        for i in range(10):
            ntc.update(read_uv(node_uv(temp_c, ntc.cold)), 10000 + 250 * i)
            ranges.append(ntc.cold)
        assert len(set(ranges)) == 1, (temp_c, ranges)


def test_conversion_is_the_beta_equation():
    assert ntc_c(VCC_UV // 2, 10000) == 25.0  # R = R25
    assert ntc_c(read_uv(node_uv(60, False)), HOT_PULLUP) == pytest.approx(60, abs=0.1)


@pytest.mark.parametrize("temp_c", [-40, -30, -26, 0, 25, 60, 75, 120])
def test_simulated_world_reads_through_the_same_divider_and_adc(temp_c):
    """The sim's `temp` goes through the divider and the ADC's clipping (simworld), and the
    sim board converts it with evse.thermal: the world agrees with the documented circuit."""
    assert simworld.NTC_PULLUP_COLD_OHMS == thermal.NTC_PULLUP_COLD_OHMS
    assert simworld.NTC_PULLUP_HOT_OHMS == thermal.NTC_PULLUP_HOT_OHMS
    assert (simworld.NTC_R25_OHMS, simworld.NTC_BETA) == (thermal.NTC_R25_OHMS, thermal.NTC_BETA)
    for cold in (False, True):
        assert simworld.adc_read_uv(simworld.ntc_node_uv(temp_c, cold)) == pytest.approx(
            read_uv(node_uv(temp_c, cold)), abs=1000)
    ntc = Ntc()
    got = settle(ntc, lambda cold: simworld.adc_read_uv(simworld.ntc_node_uv(temp_c, cold)))
    assert got[-1] == pytest.approx(temp_c, abs=0.3)


def test_simulated_world_clips_like_the_esp32_adc():
    # The old divider (10 kOhm from 3.3 V) at -30 C: 3.14 V, past the ADC's clip.
    r = simworld.ntc_ohms(-30)
    assert simworld.adc_read_uv(VCC_UV * r / (r + 10000)) == ADC_CLIP_UV
    assert simworld.adc_read_uv(simworld.ntc_node_uv(25, True, "open")) == ADC_CLIP_UV
    assert simworld.adc_read_uv(simworld.ntc_node_uv(25, False, "short")) == ADC_FLOOR_UV
