"""Who a worker is to its consumer groups: a static member id (KIP-345) that survives its restarts.

A static member restarted after a crash takes its place back at once; a dynamic one waits for its dead
predecessor's session to expire and a rebalance (about ``KAFKA_SESSION_TIMEOUT_MS``). So every worker
is static by default, with an id that is

- stable across restarts of the same worker: the host name (a k8s pod's or a compose container's
  hostname survives container restarts), the absolute data dir, a *seat* in that data dir, and the web
  port (remembered in the seat, see below);
- unique per running worker: several workers may share one host and data dir (a laptop, the tests),
  so each holds a seat: the lowest-numbered ``<data dir>/members/<n>.lock`` it can ``flock``. The
  kernel releases the lock when the process dies, even by SIGKILL, so the restarted worker takes the
  same seat back.

The web port is part of the id because the groups remember it: Faust's assignor rejects a kept
assignment that names another URL, and the broker may keep a static member's client id across a
rejoin (not verified here; the processor advertises its URL there, ``streams/runtime/owners.py``).
A port picked at random (``CREDITFLOW_WEB_PORT=0``) is therefore remembered in the seat and taken
again on restart while it is free; if it is not, the worker joins under a new id (a restart as slow
as a dynamic member's, never a wrong URL).

``CREDITFLOW_GROUP_INSTANCE_ID`` set to a name still wins; set to ``none`` it keeps dynamic membership
(an empty variable is an unset one, as for every setting; ``""`` given in code means dynamic too).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from streams.settings import Settings

log = logging.getLogger("creditflow")

# Values of group_instance_id that ask for dynamic membership (from the environment: none).
DYNAMIC = frozenset({"", "none"})
_SEATS = "members"
# Kafka accepts [a-zA-Z0-9._-] in group.instance.id, at most 249 characters.
_ILLEGAL = re.compile(r"[^A-Za-z0-9._-]")


def static_id(settings: Settings) -> str | None:
    """The configured (or resolved) instance id, None for dynamic membership."""
    value = settings.group_instance_id
    if value is None or value.strip().lower() in DYNAMIC:
        return None
    return value


@dataclass(frozen=True)
class Seat:
    """A numbered place in a data dir, held (flock) for the life of this process."""

    number: int
    path: Path
    fd: int

    @property
    def memory(self) -> Path:
        return self.path.with_suffix(".json")

    def remembered_port(self) -> int | None:
        try:
            port = json.loads(self.memory.read_text()).get("web_port")
        except (OSError, ValueError, AttributeError):
            return None
        return port if isinstance(port, int) and 0 < port < 65536 else None

    def remember_port(self, port: int) -> None:
        tmp = self.memory.with_suffix(".tmp")
        tmp.write_text(json.dumps({"web_port": port}))
        tmp.replace(self.memory)


# Seats this process holds, by data dir: one per worker process, whatever builds its app twice.
_held: dict[Path, Seat] = {}


def take_seat(data_dir: Path) -> Seat | None:
    """The lowest-numbered free seat in ``data_dir`` (None where flock does not exist)."""
    data_dir = data_dir.resolve()
    if data_dir in _held:
        return _held[data_dir]
    try:
        import fcntl
    except ImportError:  # not POSIX: no seats, so no default id (dynamic membership)
        return None
    folder = data_dir / _SEATS
    folder.mkdir(parents=True, exist_ok=True)
    number = 0
    while True:
        path = folder / f"{number}.lock"
        # os.open's descriptors are not inherited by child processes: only this process holds the seat.
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            number += 1
            continue
        except OSError as exc:  # a file system without locks (some NFS): no seat, dynamic membership
            os.close(fd)
            log.warning("cannot lock %s (%s): dynamic group membership; set CREDITFLOW_GROUP_INSTANCE_ID "
                        "for fast restarts", path, exc.strerror or exc)
            return None
        seat = Seat(number, path, fd)
        _held[data_dir] = seat
        return seat


def release_seats() -> None:
    """Give back every seat this process holds (tests; a worker keeps its seat until it exits)."""
    for seat in _held.values():
        with contextlib.suppress(OSError):
            os.close(seat.fd)
    _held.clear()


def _bindable(host: str, port: int) -> bool:
    from streams.runtime.web import check_bindable

    try:
        check_bindable(host, port)
    except OSError:
        return False
    return True


def default_id(host: str, data_dir: Path, seat: int, web_port: int) -> str:
    """The default static id of the worker in ``seat`` of ``data_dir`` on ``host`` serving on ``web_port``."""
    digest = hashlib.sha256(f"{data_dir.resolve()}\n{seat}\n{web_port}".encode()).hexdigest()[:10]
    name = _ILLEGAL.sub("_", host)[:200] or "worker"
    return f"{name}-{digest}"


def settle(settings: Settings) -> Settings:
    """``settings`` with this worker's group identity settled: the web port pinned (the configured one,
    else the seat's remembered one while free, else a fresh one, remembered) and ``group_instance_id``
    resolved (the configured name; ``""`` for dynamic membership; else the default id)."""
    from streams.runtime.web import pick_port

    seat = take_seat(settings.data_dir)
    port = settings.web_port
    if not port:
        remembered = seat.remembered_port() if seat is not None else None
        port = remembered if remembered and _bindable(settings.web_host, remembered) else pick_port(settings)
        if seat is not None and port != remembered:
            seat.remember_port(port)
    if settings.group_instance_id is not None:
        instance = static_id(settings) or ""
    elif seat is None:
        instance = ""
    else:
        instance = default_id(socket.gethostname(), settings.data_dir, seat.number, port)
    log.info("group membership: %s (web port %d)", f"static {instance}" if instance else "dynamic", port)
    return settings.model_copy(update={"web_port": port, "group_instance_id": instance})
