"""The benchmark's peak RSS is the measured process's own, not inherited from the process that
spawned it (Linux keeps ``ru_maxrss`` across fork and exec)."""

from __future__ import annotations

import subprocess
import sys

from tests.benchmarks.common import peak_rss_bytes

MIB = 1024 * 1024


def test_a_child_reports_its_own_peak_not_its_parent_s() -> None:
    held = bytearray(400 * MIB)
    held[::4096] = b"\x01" * len(held[::4096])  # touch every page: resident in this process
    assert peak_rss_bytes() >= 400 * MIB
    out = subprocess.run([sys.executable, "-c", "from tests.benchmarks.common import peak_rss_bytes as p; "
                          "x = bytearray(64 << 20); x[::4096] = b'1' * len(x[::4096]); print(p())"],
                         capture_output=True, text=True, check=True)
    child = int(out.stdout)
    del held
    assert 64 * MIB <= child < 300 * MIB
