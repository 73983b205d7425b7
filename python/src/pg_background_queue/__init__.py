"""pg_background_queue: placeholder until the client lands (owned by the client engineer)."""

__version__ = "1.0.0"
