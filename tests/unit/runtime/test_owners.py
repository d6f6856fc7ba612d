"""Partition owners from a consumer group's description: client ids carry the web URL."""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from streams.runtime.owners import client_id_for, owners_from_members, url_of


def _assignment(*topics: tuple[str, list[int]]) -> bytes:
    return bytes(ConsumerProtocolMemberAssignment(0, list(topics), b"").encode())


def test_each_partition_maps_to_its_members_url() -> None:
    a, b = client_id_for("http://127.0.0.1:8001"), client_id_for("http://10.0.0.2:8002")
    assert a is not None and b is not None and url_of(a) == "http://127.0.0.1:8001"
    members = [(a, _assignment(("events", [0, 1, 2]), ("grants", [0, 1, 2]))),
               (b, _assignment(("events", [3, 4, 5]))),
               ("aiokafka-0.14", _assignment(("events", [9]))),  # not a creditflow processor: no URL
               (a, b"")]  # a member between assignments
    assert owners_from_members(members, "events") == {0: "http://127.0.0.1:8001", 1: "http://127.0.0.1:8001",
                                                      2: "http://127.0.0.1:8001", 3: "http://10.0.0.2:8002",
                                                      4: "http://10.0.0.2:8002", 5: "http://10.0.0.2:8002"}
    assert owners_from_members(members, "other") == {}
    assert client_id_for(None) is None and url_of("aiokafka-0.14") is None
