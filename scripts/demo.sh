#!/usr/bin/env bash
# Run the pg_background_queue demo on a throwaway cluster; run as root.
#   scripts/demo.sh [--pg 15|16|18] [pgbq demo arguments...]
# Bootstraps the machine (packages, the extension for that PostgreSQL major, default 15,
# Debian's; no development virtualenv), installs the Python package alone (no test,
# benchmark or web extras) into its own virtualenv
# ${PGBQ_DEMO_VENV:-/opt/pg_background_queue/demo-venv}, then runs `pgbq demo` on that
# server as the postgres OS user (PostgreSQL refuses to run as root). The demo's throwaway
# cluster is made with the server's own initdb and pg_ctl, so the base package is all it needs.
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
DEMO_VENV=${PGBQ_DEMO_VENV:-/opt/pg_background_queue/demo-venv}
BUILD=/var/tmp/pgbq-build/src
bash "${REPO}/scripts/bootstrap.sh" --no-venv --pg "${VERSION}"
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if ! "${DEMO_VENV}/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
	log "creating ${DEMO_VENV}"
	rm -rf "${DEMO_VENV}"
	mkdir -p "$(dirname "${DEMO_VENV}")"
	/usr/bin/python3 -m venv "${DEMO_VENV}"
fi
log "installing ${BUILD}/python (base package only) into ${DEMO_VENV}"
"${DEMO_VENV}/bin/python" -m pip install -q "${BUILD}/python"
# same version number, new code: always replace the package itself
"${DEMO_VENV}/bin/python" -m pip install -q --no-deps --force-reinstall "${BUILD}/python"
chmod -R a+rX "${DEMO_VENV}"
cd /
PGBQ_VENV=${DEMO_VENV} as_postgres "${DEMO_VENV}/bin/pgbq" demo --pg-config "$(pg_config_for "${VERSION}")" "$@"
