"""LeaveGroup v3 (KIP-345), the request that removes a static member, in aiokafka's protocol types."""

from __future__ import annotations

import asyncio
import struct
from io import BytesIO

from aiokafka.consumer.group_coordinator import GroupCoordinator

from streams.runtime import leave_group
from streams.runtime.leave_group import LeaveGroupResponse_v3, StaticLeaveGroupRequest, leave_errors


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack(">h", len(raw)) + raw


def test_the_request_is_v3_with_the_members_list() -> None:
    # Brokers since 2.4 take v0-v5; v3 is the one chosen (v4+ are flexible, not written here).
    built = StaticLeaveGroupRequest("cf-processor", [("member-1", "pod-0-processor")]).prepare({13: (0, 5)})
    assert (built.API_KEY, built.API_VERSION, built.FLEXIBLE_VERSION) == (13, 3, False)
    assert built.encode() == (_string("cf-processor") + struct.pack(">i", 1) + _string("member-1")
                              + _string("pod-0-processor"))


def test_the_response_reports_errors_by_name() -> None:
    body = (struct.pack(">ih", 0, 0) + struct.pack(">i", 1) + _string("member-1") + _string("pod-0-processor")
            + struct.pack(">h", 0))
    ok = LeaveGroupResponse_v3.decode(BytesIO(body))
    assert ok.members == [("member-1", "pod-0-processor", 0)] and leave_errors(ok) == []
    # A member the broker no longer knows (fenced by a newer one with the same id): UNKNOWN_MEMBER_ID.
    fenced = LeaveGroupResponse_v3.decode(BytesIO(body[:-2] + struct.pack(">h", 25)))
    assert leave_errors(fenced) == ["UnknownMemberIdError"]


def test_install_replaces_the_coordinators_leave() -> None:
    leave_group.install()
    leave_group.install()
    assert GroupCoordinator._maybe_leave_group is leave_group._maybe_leave_group


class _Coordinator:
    """The part of aiokafka's GroupCoordinator the leave uses."""

    def __init__(self, instance: str | None, closing: bool) -> None:
        self._group_instance_id = instance
        self._closing: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if closing:
            self._closing.set_result(None)
        self.group_id, self.member_id, self.generation = "cf-sink", "member-9", 4
        self.sent: list[object] = []

    async def _send_req(self, request: object) -> object:
        self.sent.append(request)
        ok = struct.pack(">ih", 0, 0) + struct.pack(">i", 1) + _string("member-9") + _string("pod-0-sink")
        return LeaveGroupResponse_v3.decode(BytesIO(ok + struct.pack(">h", 0)))

    def reset_generation(self) -> None:
        self.generation, self.member_id = -1, ""


def test_a_closing_static_member_leaves_and_one_that_missed_a_poll_stays() -> None:
    async def run() -> None:
        closing = _Coordinator("pod-0-sink", closing=True)
        await leave_group._maybe_leave_group(closing)  # type: ignore[arg-type]
        [request] = closing.sent
        assert isinstance(request, StaticLeaveGroupRequest)
        assert request.prepare({13: (0, 5)}).to_object() == {
            "group_id": "cf-sink", "members": [{"member_id": "member-9", "group_instance_id": "pod-0-sink"}]}
        assert closing.generation == -1
        # max_poll_interval_ms passed (the heartbeat routine's leave): a static member keeps its place.
        polling = _Coordinator("pod-0-sink", closing=False)
        await leave_group._maybe_leave_group(polling)  # type: ignore[arg-type]
        assert polling.sent == [] and polling.generation == -1

    asyncio.run(run())
