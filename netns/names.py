"""The names and addresses of every object the lab creates.

Everything carries the `sdl-` prefix: cleanup removes only what has it.
"""
from pathlib import Path

LAB_PREFIX = "sdl-"
EDGE_ADDR, CLOUD_ADDR, PREFIX_LEN = "198.18.0.1", "198.18.0.2", 30   # RFC 2544 benchmarking range
VETH_EDGE, VETH_CLOUD = "sdl-e0", "sdl-c0"      # netem backend: the veth pair
TUN_IFNAME = "sdl-t0"                            # wire backend: the TUN device in each namespace
IFB_EDGE, IFB_CLOUD = "sdl-ie0", "sdl-ic0"       # both backends: receiver-side shaping devices
RUN_DIR = Path("/run/sdlab")                     # owner records and the lab lock
