"""Teardown runs to its end: stop signals that arrive during it are held, then delivered.

A run stopped by Ctrl-C or SIGTERM tears down in `finally` blocks.  A second
signal (`timeout` signals both the process and its group; an impatient
second Ctrl-C) would otherwise raise in the middle of that teardown and leave
namespaces, processes or a `running` meta.json behind.
"""
from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


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
        old[s] = signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if got:
            signal.raise_signal(got[0])
