"""``python -m pg_background_queue.bench``: same as ``pgbq bench``."""

import sys

from pg_background_queue.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
