"""Run commands in a throw-away qemu VM with a netem-capable Debian kernel (see vm/run.py)."""
