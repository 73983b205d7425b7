#!/usr/bin/env bash
# Build, install and test pg_background_queue; run as root (README's test command).
#
#   scripts/test.sh [--meson] [--keep]
#
# 1. scripts/bootstrap.sh on a fresh copy of the source tree (packages, PGXS build with
#    -Werror, make install, virtualenv).
# 2. With --meson or CI=true: compile check with meson in a separate build directory.
# 3. Distribution: META.json and every version number agree (scripts/check_meta.py); in a git
#    checkout, make dist (a zip of HEAD, written to the copy) and check the archive; as root,
#    `pgxn install ./` in the copy (PGXN's client builds and installs the extension).
# 4. As the postgres OS user, in that copy: make installcheck (pg_regress and the isolation
#    specs, each on its own temporary cluster with the library preloaded), the same suites
#    through `pgxn check ./`, then pytest tests/.
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
# The copy is removed afterwards unless --keep is given or a stage failed.
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

MESON=0 KEEP=0
[[ ${CI:-} == true ]] && MESON=1
while [[ $# -gt 0 ]]; do
	case $1 in
		--meson) MESON=1; shift ;;
		--keep) KEEP=1; shift ;;
		*) die "unknown argument: $1 (usage: test.sh [--meson] [--keep])" ;;
	esac
done
require_root

WORK=$(mktemp -d /var/tmp/pgbq-test.XXXXXX)
SRC=${WORK}/src
failed=()
cleanup() {
	if [[ ${KEEP} -eq 0 && ${#failed[@]} -eq 0 ]]; then
		rm -rf "${WORK}"
	else
		log "test tree kept in ${WORK}"
	fi
}
trap cleanup EXIT

log "copying ${REPO} to ${SRC}"
copy_tree "${REPO}" "${SRC}"
bash "${REPO}/scripts/bootstrap.sh" --src "${SRC}"
mkdir -p "${WORK}/tmp"
chown -R postgres: "${WORK}"
chmod 0755 "${WORK}"

# as_postgres with a private TMPDIR (testgres nodes and port locks live there)
pg() { (cd "${SRC}" && as_postgres TMPDIR="${WORK}/tmp" "$@"); }

stage() {  # stage NAME COMMAND...: run, report, remember failures
	local name=$1; shift
	log "stage: ${name}"
	local start=${SECONDS}
	if "$@"; then
		log "stage ${name}: ok ($((SECONDS - start))s)"
	else
		log "stage ${name}: FAILED ($((SECONDS - start))s)"
		failed+=("${name}")
	fi
}

meson_build() {
	[[ -f ${SRC}/meson.build ]] || { log "no meson.build: skipped"; return 0; }
	pg meson setup "${WORK}/build-meson" -Dpg_config="${PG_CONFIG}" >"${WORK}/meson.log" 2>&1 &&
		pg meson compile -C "${WORK}/build-meson" >>"${WORK}/meson.log" 2>&1 ||
		{ cat "${WORK}/meson.log" >&2; return 1; }
}

installcheck() {
	if compgen -G "${SRC}/specs/*.spec" >/dev/null && ! grep -q '^ISOLATION' "${SRC}/Makefile"; then
		log "warning: specs/ has specs but the Makefile defines no ISOLATION: they are not run"
	fi
	pg make -s installcheck PG_CONFIG="${PG_CONFIG}" && return 0
	local f
	for f in "${SRC}/regression.diffs" "${SRC}/output_iso/regression.diffs"; do
		[[ -f ${f} ]] && { printf '===== %s =====\n' "${f}" >&2; cat "${f}" >&2; }
	done
	for f in "${SRC}"/tmp_check*/log/postmaster.log; do
		[[ -f ${f} ]] && { printf '===== tail of %s =====\n' "${f}" >&2; tail -n 40 "${f}" >&2; }
	done
	return 1
}

check_meta() {
	(cd "${SRC}" && /usr/bin/python3 scripts/check_meta.py)
}

# make dist in the copy, archiving HEAD of the checkout (the copy has no .git)
make_dist() {
	local gitdir
	if ! gitdir=$(git -c safe.directory='*' -C "${REPO}" rev-parse --absolute-git-dir 2>/dev/null); then
		log "not a git checkout: dist skipped"
		return 0
	fi
	GIT_DIR=${gitdir} GIT_CONFIG_COUNT=1 GIT_CONFIG_KEY_0=safe.directory GIT_CONFIG_VALUE_0='*' \
		make -s -C "${SRC}" dist PG_CONFIG="${PG_CONFIG}"
}

# PGXN's client, as root: builds in the copy (already built: mostly a no-op) and installs
pgxn_install() {
	local rc=0
	(cd "${SRC}" && "${PGBQ_VENV}/bin/pgxn" install --yes --pg_config "${PG_CONFIG}" --make make ./) \
		>"${WORK}/pgxn-install.log" 2>&1 || rc=$?
	chown -R postgres: "${SRC}"
	[[ ${rc} -eq 0 ]] || tail -n 40 "${WORK}/pgxn-install.log" >&2
	return "${rc}"
}

# PGXN's client runs make installcheck; PostgreSQL refuses root, so as postgres
pgxn_check() {
	pg pgxn check --yes --pg_config "${PG_CONFIG}" --make make ./ >"${WORK}/pgxn-check.log" 2>&1 &&
		return 0
	grep -v -e '^ALTER DATABASE' -e '^CREATE' -e '^DROP' "${WORK}/pgxn-check.log" | tail -n 40 >&2
	local f
	for f in "${SRC}/regression.diffs" "${SRC}/output_iso/regression.diffs"; do
		[[ -f ${f} ]] && { printf '===== %s =====\n' "${f}" >&2; cat "${f}" >&2; }
	done
	return 1
}

# ruff on the package and the tests, mypy --strict on the package
lint() {
	(cd "${SRC}/python" && "${PGBQ_VENV}/bin/ruff" check src ../tests &&
		"${PGBQ_VENV}/bin/ruff" format --check src &&
		"${PGBQ_VENV}/bin/mypy")
}

run_pytest() {
	local rc=0
	pg "${PGBQ_VENV}/bin/pytest" -q tests/ || rc=$?
	if [[ ${rc} -eq 5 ]]; then
		log "pytest collected no tests: that is a failure"
	fi
	return "${rc}"
}

[[ ${MESON} -eq 1 ]] && stage meson meson_build
stage lint lint
stage meta check_meta
stage dist make_dist
stage pgxn-install pgxn_install
stage installcheck installcheck
stage pgxn-check pgxn_check
stage pytest run_pytest

if [[ ${#failed[@]} -gt 0 ]]; then
	log "FAILED: ${failed[*]}"
	exit 1
fi
log "all tests passed"
