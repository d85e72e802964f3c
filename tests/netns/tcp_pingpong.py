"""A tiny TCP request/response program for the namespace tests (run inside a namespace).

server: echo every message back.  client: send `count` messages of `size`
bytes every `interval_ms`, print one JSON line with the send time and RTT
of each (CLOCK_MONOTONIC ms) and whether the connection ever broke (with
--say-half, a line `half` first, as soon as half the samples are in).
"""
import argparse
import json
import socket
import sys
import time


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def server(a):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.addr, a.port))
    ls.listen(1)
    ls.settimeout(a.timeout_s)
    conn, _ = ls.accept()
    conn.settimeout(a.timeout_s)
    try:
        while True:
            hdr = conn.recv(4)
            if not hdr:
                break
            hdr += recv_exact(conn, 4 - len(hdr))
            n = int.from_bytes(hdr, "big")
            data = recv_exact(conn, n)
            conn.sendall(hdr + data[:16])
    except (ConnectionError, socket.timeout):
        pass
    print(json.dumps({"ok": True}))


def client(a):
    s = socket.create_connection((a.addr, a.port), timeout=a.timeout_s)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out, broke = [], None
    payload = b"x" * a.size
    t_next = time.monotonic()
    try:
        for _ in range(a.count):
            time.sleep(max(0.0, t_next - time.monotonic()))
            t0 = time.monotonic()
            s.sendall(len(payload).to_bytes(4, "big") + payload)
            recv_exact(s, 4 + min(16, a.size))
            out.append([t0 * 1e3, (time.monotonic() - t0) * 1e3])
            if a.say_half and len(out) == a.count // 2:
                print("half", flush=True)
            t_next += a.interval_ms / 1000
    except (ConnectionError, OSError) as e:
        broke = str(e)
    s.close()
    print(json.dumps({"samples": out, "broke": broke}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("role", choices=["server", "client"])
    ap.add_argument("--addr", required=True)
    ap.add_argument("--port", type=int, default=47100)
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--interval-ms", type=float, default=20)
    ap.add_argument("--timeout-s", type=float, default=20)
    ap.add_argument("--say-half", action="store_true", help="client: print a line `half` once half the samples are in")
    a = ap.parse_args()
    (server if a.role == "server" else client)(a)
    sys.exit(0)
