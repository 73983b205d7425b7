#!/usr/bin/env bash
# Run the pg_background_queue demo on a throwaway cluster; run as root.
#   scripts/demo.sh [pgbq demo arguments...]
# Bootstraps the machine (packages, extension, virtualenv), then runs `pgbq demo` as the
# postgres OS user (PostgreSQL refuses to run as root).
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"
require_root
bash "${REPO}/scripts/bootstrap.sh"
cd /
as_postgres "${PGBQ_VENV}/bin/pgbq" demo "$@"
