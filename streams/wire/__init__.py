"""The wire format: Avro codec, schema registry, dead-letter headers and event models."""
