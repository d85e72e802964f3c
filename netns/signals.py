"""Stop signals: teardown runs to its end, and forked copies of the process keep the default action.

A run stopped by Ctrl-C or SIGTERM tears down in `finally` blocks.  A second
signal (`timeout` signals both the process and its group; an impatient
second Ctrl-C) would otherwise raise in the middle of that teardown and leave
namespaces, processes or a `running` meta.json behind.

A Python-level handler is inherited by every fork that does not exec: the
helpers of netns/nsexec.py and pyroute2's NetNS (which stops its helper with
SIGTERM).  Such a copy must die as the default action says, not run the
owner's handler: raising there would unwind the owner's stack — its teardown
included — inside the helper.  `for_this_process_only` wraps a handler so.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def for_this_process_only(handler):
    """`handler` in the process that installs it; in a forked copy, the signal's default action."""
    owner = os.getpid()

    def guarded(signum, frame):
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        return handler(signum, frame)
    return guarded


@contextmanager
def deferred_stop_signals(signums=STOP_SIGNALS):
    """Within the block, record stop signals instead of acting on them; afterwards deliver the first
    one to the handler that was in place (a KeyboardInterrupt, the CLI's Terminated, or the default
    action).  Python runs signal handlers in the main thread only, so elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {}
    for s in signums:
        h = signal.getsignal(s)
        if h is None or h is signal.SIG_IGN:     # None: installed outside Python; leave it alone
            continue
        old[s] = signal.signal(s, for_this_process_only(lambda signum, frame: got.append(signum)))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            signal.raise_signal(got[0])
