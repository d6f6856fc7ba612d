"""Which worker owns a partition: read from the consumer group itself, the one authority on it.

A processor's consumer names itself ``creditflow-processor <web url>`` (its Kafka ``client.id``), so
the group coordinator's description of the group (members, their client ids and assignments) says
which web server answers for each partition. There is no directory to keep in sync and none to go
stale: the description changes exactly when the group rebalances. A worker that is asked about an
account it does not own looks the owner up this way (cached for a moment) and forwards the request.
"""

from __future__ import annotations

from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment

from streams.runtime.kafka_clients import KafkaClients

CLIENT_ID_PREFIX = "creditflow-processor "


def client_id_for(web_url: str | None) -> str | None:
    """The consumer's client id that advertises ``web_url`` (None: keep aiokafka's default)."""
    return f"{CLIENT_ID_PREFIX}{web_url}" if web_url else None


def url_of(client_id: str) -> str | None:
    return client_id[len(CLIENT_ID_PREFIX):] if client_id.startswith(CLIENT_ID_PREFIX) else None


def owners_from_members(members: list[tuple[str, bytes]], topic: str) -> dict[int, str]:
    """Partition of ``topic`` -> web URL, from (client id, member assignment bytes) pairs. Pure."""
    out: dict[int, str] = {}
    for client_id, assignment in members:
        url = url_of(client_id)
        if url is None or not assignment:
            continue
        for assigned_topic, partitions in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
            if assigned_topic == topic:
                for p in partitions:
                    out[p] = url
    return out


async def partition_owners(kafka: KafkaClients, group: str, topic: str) -> dict[int, str]:
    """Partition of ``topic`` -> web URL of the group member it is assigned to, as the coordinator sees it."""
    admin = kafka.admin(request_timeout_ms=5000)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members: list[tuple[str, bytes]] = []
    for response in responses:
        for described in response.to_object()["groups"]:
            for m in described["members"]:
                members.append((m["client_id"], m["member_assignment"]))
    return owners_from_members(members, topic)
