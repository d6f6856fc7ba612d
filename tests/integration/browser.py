"""Headless Chromium (Debian's package, installed by `make setup`) for tests that render pages."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is missing: `make setup` installs Debian's chromium package"
    return found


def dump_dom(page: Path, timeout: float = 180) -> str:
    """The page's DOM after its scripts ran, as headless Chromium serialises it; offline and with
    a throwaway profile."""
    with tempfile.TemporaryDirectory(prefix="creditflow-chromium-") as profile:
        done = subprocess.run(
            [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--no-first-run", "--disable-extensions", f"--user-data-dir={profile}",
             "--virtual-time-budget=5000", "--dump-dom", page.resolve().as_uri()],
            capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
