#!/usr/bin/env bash
# The whole test suite (the README's test command): installs pybuild into a venv outside /root,
# runs the differential conformance suite against ../shared/conformance, then pytest.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${PYBUILD_VENV:-/opt/pybuild/venv}"
# Debian's python (not one under /root): the unprivileged test user must be able to run the venv.
PY=/usr/bin/python3
SHARED="${PYBUILD_SHARED:-$REPO/../shared}"

case "$(readlink -f "$VENV/bin/python" 2>/dev/null)" in
    /usr/bin/*) ;;
    *) rm -rf "$VENV"; mkdir -p "$(dirname "$VENV")"; "$PY" -m venv "$VENV" ;;
esac
"$VENV/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
# A regular (not editable) install: the checkout may live where the test user cannot read it.
"$VENV/bin/pip" install -q "$REPO[test]"
chmod -R a+rX "$VENV" 2>/dev/null || true
export PATH="$VENV/bin:$PATH"

# Conformance: registry on 127.0.0.1:5000, base images, then every public case.
if [ -d "$SHARED/conformance" ]; then
    export PYBUILD_ROOT="${PYBUILD_CONFORMANCE_ROOT:-$(mktemp -d /tmp/pybuild-conformance.XXXXXX)}"
    "$SHARED/conformance/start-registry.sh" >/dev/null
    "$SHARED/conformance/make-base-images.sh" >/dev/null
    # The shared public cases, and our own extra cases (their expected results recorded with
    # BuildKit through the same harness's `golden`).
    "$VENV/bin/python" "$REPO/tests/conformance_gate.py" "$SHARED/conformance" \
        "$REPO/tests/conformance-known-failures.txt" "$SHARED/conformance/cases" "$REPO/tests/conformance-extra"
    # and again with the copying snapshotter (the fallback for kernels without rootless overlay)
    PYBUILD_ROOT="$(mktemp -d /tmp/pybuild-conformance-native.XXXXXX)" PYBUILD_SNAPSHOTTER=native \
        "$VENV/bin/python" "$REPO/tests/conformance_gate.py" "$SHARED/conformance" \
        "$REPO/tests/conformance-known-failures.txt" "$SHARED/conformance/cases" "$REPO/tests/conformance-extra"
    unset PYBUILD_ROOT
else
    echo "conformance: $SHARED/conformance not found" >&2
    exit 1
fi

cd "$REPO"
# The tests find the shared data where this script did (tests/conftest.py: shared_dir()).
export PYBUILD_SHARED="$SHARED"
exec "$VENV/bin/pytest" -q -p no:cacheprovider tests "$@"
