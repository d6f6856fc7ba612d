"""A static group member that leaves its group when it stops gracefully.

aiokafka sends no LeaveGroup for a static member (``group_instance_id`` set): LeaveGroup v0/v1, all
it knows, name a member id only, and a static member's id is meant to outlive the process (KIP-345).
That is right for a crash, but a SIGTERMed worker must hand its partitions over at once. LeaveGroup
v3+ names members by (member id, group instance id), which removes a static member; v3 is the last
non-flexible version, so its request and response are written here in aiokafka's protocol types.

``install`` makes every aiokafka group coordinator of the process (the processor's, the sink's and
Faust's own consumer) send it when the consumer is closed: after the final commit (the services drain
and commit before they stop their consumer), once the coordinator's heartbeat has stopped (a heartbeat
after the leave would rejoin the group), before the connections close. A static member that merely
missed ``max_poll_interval_ms`` keeps aiokafka's behaviour (it stays in the group).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

log = logging.getLogger("creditflow")

LEAVE_GROUP = 13


# The protocol's own names, as aiokafka spells them.
class LeaveGroupResponse_v3(Response):
    API_KEY = LEAVE_GROUP
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")),
                          ("error_code", Int16))),
    )


class LeaveGroupRequest_v3(RequestStruct):
    API_KEY = LEAVE_GROUP
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class StaticLeaveGroupRequest(Request[LeaveGroupRequest_v3]):
    """LeaveGroup for members named by (member id, group instance id); needs a broker with v3 (2.4+)."""

    API_KEY = LEAVE_GROUP

    def __init__(self, group: str, members: list[tuple[str, str | None]]) -> None:
        self._group = group
        self._members = members

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self._group, self._members)


def leave_errors(response: Any) -> list[str]:
    """The errors a LeaveGroup v3 response reports (for the group, then per member), by name."""
    errors = [response.error_code] + [code for _member, _instance, code in response.members]
    return [for_code(code).__name__ for code in errors if code]


_original = GroupCoordinator._maybe_leave_group


async def _maybe_leave_group(self: GroupCoordinator) -> None:
    instance = self._group_instance_id
    if instance is None or not self._closing.done() or self.generation <= 0:
        await _original(self)
        return
    # A minimal-effort attempt, like aiokafka's own: not resent if it fails (the session timeout
    # then moves the partitions).
    request = StaticLeaveGroupRequest(self.group_id, [(self.member_id, instance)])
    try:
        response = await self._send_req(request)
    except KafkaError as exc:
        log.warning("leaving group %s as static member %s failed: %r", self.group_id, instance, exc)
    else:
        errors = leave_errors(response)
        if errors:
            log.warning("leaving group %s as static member %s: %s", self.group_id, instance, ", ".join(errors))
        else:
            log.info("left group %s as static member %s", self.group_id, instance)
    self.reset_generation()


def install() -> None:
    """Static members of every consumer in this process leave their group when closed (idempotent)."""
    GroupCoordinator._maybe_leave_group = _maybe_leave_group  # type: ignore[method-assign]
