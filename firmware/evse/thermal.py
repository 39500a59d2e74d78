"""Over-temperature derating with hysteresis: normal -> derate -> stop and back."""

NORMAL = 0
DERATE = 1
STOP = 2


class Thermal:
    def __init__(self):
        self.level = NORMAL

    def update(self, temp_c, derate_c, stop_c, hyst_c):
        """New level for this temperature; leaving a level needs hyst_c below its entry."""
        lvl = self.level
        if temp_c is None:
            return lvl
        if temp_c >= stop_c:
            lvl = STOP
        elif lvl == STOP and temp_c >= stop_c - hyst_c:
            lvl = STOP
        elif temp_c >= derate_c:
            lvl = DERATE
        elif lvl >= DERATE and temp_c >= derate_c - hyst_c:
            lvl = DERATE
        else:
            lvl = NORMAL
        self.level = lvl
        return lvl
