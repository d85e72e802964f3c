#!/usr/bin/env bash
# `make test`: every suite, in order of cost.  Fails on the first failing
# stage; pytest's "no tests ran" (exit 5) is a failure too.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
start=$(date +%s)
stage() {  # stage NAME CMD...
    local name=$1; shift
    echo "=== $name: $*"
    local t0=$(date +%s)
    "$@"
    local rc=$?
    echo "=== $name: exit $rc in $(( $(date +%s) - t0 )) s"
    if [ $rc -ne 0 ]; then
        [ $rc -eq 5 ] && echo "=== $name: pytest ran no test — that is a failure"
        exit $rc
    fi
}
stage unit  $PY -m pytest tests/unit -q -p no:cacheprovider
stage netns $PY -m pytest tests/netns -q -p no:cacheprovider
stage e2e   $PY -m pytest tests/e2e -q -p no:cacheprovider
stage linkcheck $PY -m lab linkcheck --quick
echo "=== all stages passed in $(( $(date +%s) - start )) s"
