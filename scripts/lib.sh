# Sourced by scripts/run and scripts/test: finding and installing what a fresh machine lacks.

# Whether PostgreSQL's server binaries (initdb) are here: on PATH, or Debian's.
have_pg_server() {
  command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null
}

# Debian's newest server `bin` directory, last on PATH: the throwaway clusters find initdb there
# on any Debian release (Debian does not put it on PATH).
path_with_pg_server() {
  local newest
  newest=$(compgen -G "/usr/lib/postgresql/*/bin" | sort -V | tail -n 1 || true)
  if [ -n "$newest" ]; then PATH="$PATH:$newest"; fi
  export PATH
}

# apt_install WHO PACKAGE...: installs the packages as root; otherwise says what to install
# and fails.
apt_install() {
  local who=$1
  shift
  if [ "$(id -u)" -ne 0 ]; then
    echo "$who: missing $*; install them (apt-get install $*) or run as root" >&2
    exit 1
  fi
  echo "$who: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
