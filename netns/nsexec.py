"""Run a little Python inside a namespace without moving the caller: fork, setns, do, report back.

Some kernel state is only visible from inside a network namespace (sysctls
under /proc/sys/net, /proc/net/snmp, ethtool on a device there).  A forked
child enters the namespace, runs `fn`, and sends its JSON-able result (or
its error) back through a pipe; the parent never changes namespace, so
threads and open handles are unaffected.
"""
from __future__ import annotations

import json
import os
import select
import signal
import time

from pyroute2 import netns

from netns.link import LinkError

CHILD_TIMEOUT_S = 10.0


def in_namespace(ns: str, fn, *args):
    """fn(*args) evaluated inside namespace `ns`; its return value must be JSON-able.
    An OSError in the child comes back as OSError (errno kept); anything else as LinkError."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:                                     # child: never returns into the caller's code
        os.close(r)
        try:
            netns.setns(ns, flags=0)
            out = {"ok": fn(*args)}
        except OSError as e:
            out = {"errno": e.errno, "error": f"{e.strerror or e}"}
        except Exception as e:                       # reported to the parent, which raises
            out = {"error": f"{type(e).__name__}: {e}"}
        try:
            os.write(w, json.dumps(out).encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([r], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                raise LinkError(f"in namespace {ns}: the helper process gave no answer within "
                                f"{CHILD_TIMEOUT_S:g} s; killed")
            b = os.read(r, 65536)
            if not b:
                break
            chunks.append(b)
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    try:
        out = json.loads(b"".join(chunks) or b"{}")
    except ValueError:
        out = {}
    if "ok" in out:
        return out["ok"]
    if "errno" in out:
        raise OSError(out["errno"], f"in namespace {ns}: {out['error']}")
    raise LinkError(f"in namespace {ns}: {out.get('error', 'the helper process died')}")
