"""pgbq CLI: placeholder until the real CLI lands (owned by the client engineer)."""

import sys


def main(argv: list[str] | None = None) -> int:
    """Placeholder entry point."""
    print("pgbq: not implemented yet", file=sys.stderr)
    return 1
