# Shared helpers for scripts/*.sh (sourced, not run).

PG_CONFIG=${PG_CONFIG:-/usr/bin/pg_config}
PGBQ_VENV=${PGBQ_VENV:-/opt/pg_background_queue/venv}

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
