"""stream_app: learn recommendation embeddings incrementally from Kafka streams."""

__version__ = "0.1.0"
