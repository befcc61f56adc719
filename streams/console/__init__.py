"""The read-only web console (`sagastream console`): pages over the project's Kafka readers."""
