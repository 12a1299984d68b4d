"""The clocks: the test clock of a whole pod reads its offset from a file every process shares."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sidecar.clock import OffsetClock, SystemClock, clock_from_environment


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def test_the_offset_clock_moves_both_readings_by_the_seconds_in_its_file(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write(path, "0")
    clock = OffsetClock(str(path))
    assert abs(clock.now() - time.time()) < 1
    write(path, "3600.5")
    assert 3599 < clock.now() - time.time() < 3602
    assert 3599 < clock.monotonic() - time.monotonic() < 3602


def test_an_unreadable_offset_keeps_the_last_one_read(tmp_path: Path) -> None:
    path = tmp_path / "offset"
    write(path, "100")
    clock = OffsetClock(str(path))
    assert clock.offset() == 100
    write(path, "not a number")
    assert clock.offset() == 100
    path.unlink()
    assert clock.offset() == 100


def test_the_test_clock_is_chosen_only_by_its_environment_variable(tmp_path: Path) -> None:
    assert isinstance(clock_from_environment({}), SystemClock)
    chosen = clock_from_environment({"SIDECAR_TEST_CLOCK_FILE": str(tmp_path / "offset")})
    assert isinstance(chosen, OffsetClock)
