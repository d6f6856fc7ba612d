"""Finding running workers through the data dir."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from streams.runtime.web import pick_port, running_workers
from streams.settings import Settings


def _announce(data_dir: Path, pid: int, url: str) -> None:
    folder = data_dir / "workers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{pid}.json").write_text(json.dumps({"url": url, "pid": pid, "role": "all", "app_id": "a"}))


def test_running_workers_lists_live_processes_only(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _announce(tmp_path, os.getpid(), "http://127.0.0.1:1111")
    _announce(tmp_path, dead.pid, "http://127.0.0.1:2222")
    (tmp_path / "workers" / "garbage.json").write_text("{not json")
    assert [w.url for w in running_workers(tmp_path)] == ["http://127.0.0.1:1111"]


def test_running_workers_without_folder(tmp_path: Path) -> None:
    assert running_workers(tmp_path / "nothing") == []


def test_pick_port_keeps_a_configured_port_and_finds_a_free_one() -> None:
    assert pick_port(Settings(web_port=6066)) == 6066
    assert 0 < pick_port(Settings(web_port=0)) < 65536
