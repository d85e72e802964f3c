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
# Optional extras asked for (SDLAB_EXTRAS=ray) but missing from an existing .venv: install them now.
if [[ ",${SDLAB_EXTRAS:-}," == *",ray,"* ]] && ! $PY -c "import ray" 2>/dev/null; then
    bash scripts/setup.sh
fi
stage unit  $PY -m pytest tests/unit -q -p no:cacheprovider
if ! $PY -c "import ray" 2>/dev/null; then
    echo "=== ray: SKIPPED — Ray (optional extra) is not installed, so sweep --ray was NOT tested (make test installs it unless SDLAB_EXTRAS is set without ray)"
fi
stage netns $PY -m pytest tests/netns -q -p no:cacheprovider
stage e2e   $PY -m pytest tests/e2e -q -p no:cacheprovider
stage linkcheck $PY -m lab linkcheck --quick
stage validate $PY -m lab validate --quick
# The netem backend: natively when this kernel has sch_netem (the netns stage above used it),
# otherwise in a qemu VM with a Debian kernel (≈2–3 min; SDLAB_VM_TEST=0 skips it, said loudly).
if $PY -c "import sys; from netns.backends import netem_available; sys.exit(0 if netem_available() else 1)"; then
    echo "=== vm-test: skipped — this kernel has sch_netem, so the netns and linkcheck stages tested netem natively"
elif [ "${SDLAB_VM_TEST:-1}" = "0" ]; then
    echo "=== vm-test: SKIPPED because SDLAB_VM_TEST=0 — the netem backend was NOT tested in this run"
else
    stage vm-test $PY -m vm.run --timeout-s 1200 -- bash vm/test.sh
fi
echo "=== all stages passed in $(( $(date +%s) - start )) s"
