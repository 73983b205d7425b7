#!/usr/bin/env bash
# Prepare this machine (Debian 12) for pg_background_queue; run as root; idempotent.
#
#   scripts/bootstrap.sh [--src DIR] [--no-build] [--no-venv]
#
# 1. apt-get installs PostgreSQL 15 (server, headers, pg_cron), meson, ninja, gcc, make and
#    python3-venv when any is missing.
# 2. Builds the extension with PGXS, warnings as errors, and installs it. The build happens in
#    DIR when given (it must be a disposable copy), otherwise in a fresh copy of the source
#    tree under /var/tmp/pgbq-build, so the working tree is never written to.
# 3. Creates (or updates) the virtualenv ${PGBQ_VENV:-/opt/pg_background_queue/venv} from
#    Debian's /usr/bin/python3 and installs the Python package with its test and dev extras,
#    and pgxnclient (the `pgxn` command; scripts/test.sh runs pgxn install and pgxn check).
#    The venv is world-readable so the postgres user can run pytest and pgbq from it.
#    PGBQ_EDITABLE=1 installs the package editable from this checkout instead (then the
#    postgres user must be able to read the checkout).
#
# Environment: PG_CONFIG (default /usr/bin/pg_config), PGBQ_VENV, PGBQ_EDITABLE.
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

SRC="" BUILD=1 VENV=1
while [[ $# -gt 0 ]]; do
	case $1 in
		--src) SRC=$(cd "$2" && pwd); shift 2 ;;
		--no-build) BUILD=0; shift ;;
		--no-venv) VENV=0; shift ;;
		*) die "unknown argument: $1 (usage: bootstrap.sh [--src DIR] [--no-build] [--no-venv])" ;;
	esac
done
require_root

PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron meson ninja-build
	python3-venv gcc make ca-certificates)
missing=()
for pkg in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "${pkg}" 2>/dev/null | grep -q 'install ok installed' ||
		missing+=("${pkg}")
done
if [[ ${#missing[@]} -gt 0 ]]; then
	log "installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -q
	apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi

if [[ -z ${SRC} ]]; then
	SRC=/var/tmp/pgbq-build
	log "copying ${REPO} to ${SRC}"
	copy_tree "${REPO}" "${SRC}"
fi

if [[ ${BUILD} -eq 1 ]]; then
	log "building the extension in ${SRC} (PGXS, -Werror)"
	make_args=(-C "${SRC}" PG_CONFIG="${PG_CONFIG}" COPT="-Wall -Wextra -Werror")
	make -s "${make_args[@]}" -j"$(nproc)"
	make -s "${make_args[@]}" install
fi

if [[ ${VENV} -eq 1 ]]; then
	export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
	if ! "${PGBQ_VENV}/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
		log "creating ${PGBQ_VENV}"
		rm -rf "${PGBQ_VENV}"
		mkdir -p "$(dirname "${PGBQ_VENV}")"
		/usr/bin/python3 -m venv "${PGBQ_VENV}"
		"${PGBQ_VENV}/bin/python" -m pip install -q --upgrade pip
	fi
	pip=("${PGBQ_VENV}/bin/python" -m pip install -q)
	"${PGBQ_VENV}/bin/pgxn" --version >/dev/null 2>&1 || "${pip[@]}" pgxnclient
	if [[ ${PGBQ_EDITABLE:-0} == 1 ]]; then
		log "installing ${REPO}/python (editable) into ${PGBQ_VENV}"
		"${pip[@]}" -e "${REPO}/python[test,dev,bench]"
	else
		log "installing ${SRC}/python into ${PGBQ_VENV}"
		"${pip[@]}" "${SRC}/python[test,dev,bench]"
		# same version number, new code: always replace the package itself
		"${pip[@]}" --no-deps --force-reinstall "${SRC}/python"
	fi
	chmod -R a+rX "${PGBQ_VENV}"
fi
log "bootstrap done"
