#!/bin/bash
# What `make vm-test` runs inside the VM (python -m vm.run -- bash vm/test.sh):
# the whole netns suite and the quick link fidelity check, both on the netem
# backend.  Each first measures this guest unimpaired (delay 0) and judges
# every delay against that baseline (netns/fidelity/tcg.py), in this boot.  Both always run; the exit status is non-zero if either failed.
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="$REPO/.venv/bin/python"      # the repo's venv, by absolute path (the guest's PATH has the host's python3)
cd "$REPO" || exit 126
export SDLAB_TCG=1                 # tests/netns measure the TCG baseline first and judge timings against it
echo "== vm-test: kernel $(uname -r), $(nproc) vCPUs (TCG), $(grep -c . /proc/modules) modules loaded"
echo "== SDLAB_BACKEND=netem pytest tests/netns"
SDLAB_BACKEND=netem "$PY" -m pytest tests/netns -q -p no:cacheprovider -rs
topo=$?
echo "== netns.fidelity.linkcheck --backend netem --quick --tcg"
"$PY" -m netns.fidelity.linkcheck --backend netem --quick --tcg
link=$?
echo "== vm-test: netns tests exit $topo, linkcheck exit $link"
[ "$topo" -eq 0 ] && [ "$link" -eq 0 ]
