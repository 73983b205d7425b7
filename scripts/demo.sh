#!/usr/bin/env bash
# Run the pg_background_queue demo on a throwaway cluster; run as root.
#   scripts/demo.sh [--pg 15|16|18] [pgbq demo arguments...]
# Bootstraps the machine (packages, extension, virtualenv) for that PostgreSQL major
# (default 15, Debian's), then runs `pgbq demo` on it as the postgres OS user
# (PostgreSQL refuses to run as root).
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"
require_root
VERSION=15
if [[ ${1:-} == --pg ]]; then
	VERSION=$(parse_pg_versions "${2:?--pg needs a version}")
	shift 2
fi
bash "${REPO}/scripts/bootstrap.sh" --pg "${VERSION}"
cd /
as_postgres "${PGBQ_VENV}/bin/pgbq" demo --pg-config "$(pg_config_for "${VERSION}")" "$@"
