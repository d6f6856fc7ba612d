"""The pure parts of the processor's checkpoint: what a batch commits, and which partitions it writes."""

from __future__ import annotations

from aiokafka import TopicPartition

from streams.credits.meter import RawRecord
from streams.runtime.changelog import ChangelogTable
from streams.runtime.checkpoint import BatchWrites, next_offsets, transactional_id


def test_offsets_are_the_next_to_read_by_input_partition() -> None:
    fetched = {
        TopicPartition("events", 0): [RawRecord("events", 0, 7, None, b""), RawRecord("events", 0, 9, None, b"")],
        TopicPartition("grants", 0): [RawRecord("grants", 0, 3, None, b"")],
        TopicPartition("events", 2): [RawRecord("events", 2, 0, None, b"")],
        TopicPartition("events", 4): [],
    }
    assert next_offsets(fetched) == {0: {TopicPartition("events", 0): 10, TopicPartition("grants", 0): 4},
                                     2: {TopicPartition("events", 2): 1}}


def test_a_batch_writes_the_partitions_of_its_offsets_and_of_its_state(tmp_path: object) -> None:
    table = ChangelogTable("t", "t-changelog", 6, state_dir=str(tmp_path))
    try:
        batch = BatchWrites(None, [(table, 5, "fp", {})], [(table, 1, "acct", {})],
                            {1: {TopicPartition("events", 1): 4}, 3: {TopicPartition("events", 3): 2}})
        assert batch.partitions() == {1, 3, 5}
    finally:
        table.close()


def test_one_transactional_id_per_input_partition() -> None:
    assert transactional_id("app-processor", 3) == "app-processor-p3"
    assert transactional_id("app-processor", 3) != transactional_id("app-processor", 4)
