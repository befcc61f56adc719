"""Local infrastructure: Apache Kafka and a schema registry from Maven Central, process helpers."""
