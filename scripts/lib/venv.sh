# Sourced by scripts/demo and scripts/test: makes the virtual environment and installs the requirements.
#
# PYTHON picks the interpreter (default python3; CPython 3.11, 3.12 and 3.13 are supported) and TEOS_VENV
# the environment's folder (default .venv). Where a dependency has no wheel for this Python (plyvel on
# 3.13), pip builds it from source, which needs LevelDB's headers: on Debian or Ubuntu they are installed
# with apt-get (Debian's libleveldb-dev), saying so; elsewhere the message says what to install.

TEOS_VENV=${TEOS_VENV:-.venv}
PY=${PYTHON:-python3}

venv_log() { printf '%s: %s\n' "${TEOS_SCRIPT:-setup}" "$*" >&2; }

# Runs "$@" with its output kept in a log that is shown only if it fails.
quietly() {
    local out rc
    out=$(mktemp)
    if "$@" >"$out" 2>&1; then rc=0; else rc=$?; fi
    if [ "$rc" -ne 0 ]; then
        grep -v '^WARNING: Location' "$out" >&2 || true
    fi
    rm -f "$out"
    return "$rc"
}

check_python() {
    if ! command -v "$PY" >/dev/null 2>&1; then
        venv_log "no $PY found: install CPython 3.11, 3.12 or 3.13, or set PYTHON=/path/to/python3"
        return 1
    fi
    local version
    version=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    case "$version" in
        3.11|3.12|3.13) ;;
        *) venv_log "warning: $PY is Python $version; teos supports 3.11, 3.12 and 3.13" ;;
    esac
}

have_leveldb_headers() {
    [ -f /usr/include/leveldb/db.h ] || [ -f /usr/local/include/leveldb/db.h ] \
        || [ -f /opt/homebrew/include/leveldb/db.h ]
}

# plyvel publishes wheels up to CPython 3.12; elsewhere it is compiled against LevelDB's headers.
ensure_leveldb_headers() {
    if "$TEOS_VENV/bin/python" -m pip download --quiet --no-deps --only-binary :all: \
            -d "$TEOS_VENV/.wheel-probe" 'plyvel>=1.5,<2' >/dev/null 2>&1; then
        rm -rf "$TEOS_VENV/.wheel-probe"
        return 0
    fi
    rm -rf "$TEOS_VENV/.wheel-probe"
    have_leveldb_headers && return 0
    if [ "$(uname -s)" = Darwin ]; then
        venv_log "plyvel has no wheel for this Python and LevelDB's headers are missing: brew install leveldb"
        return 1
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        venv_log "plyvel has no wheel for this Python: install LevelDB's development headers (leveldb-devel, libleveldb-dev) and run again"
        return 1
    fi
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    venv_log "plyvel has no wheel for this Python: installing Debian's libleveldb-dev to build it (apt-get)"
    quietly $sudo apt-get update -qq || { venv_log "apt-get update failed"; return 1; }
    DEBIAN_FRONTEND=noninteractive quietly $sudo apt-get install -y -qq --no-install-recommends \
        libleveldb-dev g++ || { venv_log "apt-get install libleveldb-dev failed"; return 1; }
}

# make_venv REQUIREMENT_FILE...: the environment with those requirements and teos (editable) installed.
make_venv() {
    check_python || return 1
    if [ ! -x "$TEOS_VENV/bin/python" ]; then
        quietly "$PY" -m venv "$TEOS_VENV" || { venv_log "creating $TEOS_VENV failed"; return 1; }
    fi
    quietly "$TEOS_VENV/bin/python" -m pip install --quiet --upgrade pip || return 1
    ensure_leveldb_headers || return 1
    local args=()
    for req in "$@"; do args+=(-r "$req"); done
    quietly "$TEOS_VENV/bin/python" -m pip install --quiet "${args[@]}" \
        || { venv_log "installing the requirements into $TEOS_VENV failed (output above)"; return 1; }
    quietly "$TEOS_VENV/bin/python" -m pip install --quiet --no-deps -e . \
        || { venv_log "installing teos into $TEOS_VENV failed (output above)"; return 1; }
}
