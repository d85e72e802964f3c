"""Run one command in a throw-away qemu VM with a netem-capable Debian kernel.

    sudo .venv/bin/python -m vm.run [--timeout-s N] -- CMD...

boots the VM (vm/image.py builds kernel + initramfs on first use), runs CMD
inside with the repo as the working directory, prints its output as it
comes, and exits with CMD's exit status.  The guest sees the host's files
read-only under a tmpfs overlay, so it can make namespaces, load modules and
write anywhere without touching the host.

Software emulation only (TCG): KVM does not work on the machines this was
built on (`/dev/kvm` exists but qemu aborts or hangs), so the guest runs
several times slower than the host; timing-sensitive figures from inside are
TCG's (DESIGN.md: ≈1 ms extra RTT at 25 ms each way).

The host side owns the VM's life: an overall timeout, and Ctrl-C, kill qemu
(the whole process group) and the share directory is removed.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from vm.image import CACHE_DIR, VM_DIR, VmError, prepare

REPO = VM_DIR.parent
DEFAULT_TIMEOUT_S = 1800.0
MEMORY_MIB = 2048
DEFAULT_CPU = "max"
BEGIN, END = "SDLAB-VM-BEGIN", "SDLAB-VM-END"
EXIT_TIMEOUT, EXIT_NO_STATUS = 124, 125


@dataclass(frozen=True)
class VmResult:
    status: int               # CMD's exit status; 124 on timeout, 125 if the guest never reported one
    output: str               # CMD's stdout+stderr
    boot_s: float             # qemu start → CMD start (host clock)
    total_s: float            # qemu start → qemu gone
    console_log: Path         # the whole serial console of the last run


def qemu_argv(image, share: Path, smp: int, memory_mib: int, cpu: str = "max", extra_append: str = "") -> list[str]:
    """The qemu command line.  Flags are the ones proven on TCG-only hosts (DESIGN.md).

    tsc=reliable clocksource=tsc: the guest otherwise marks the TSC unstable
    under TCG and falls back to the emulated HPET; measured, a clock read
    then costs 1.6 µs instead of 0.64 µs, and the TCP ping-pong RTT at 10 ms
    each way was 22.4 ms instead of 21.7 ms."""
    append = " ".join([
        "console=ttyS0", "tsc=reliable", "clocksource=tsc", "panic=-1", "quiet", "loglevel=3", "rdinit=/init",
        f"sdlab_kver={image.kernel_version}", f"sdlab_kdir={image.kernel_dir}",
    ] + extra_append.split())
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", cpu,
        "-m", str(memory_mib), "-smp", str(smp),
        "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot", "-nic", "none",
        "-kernel", str(image.vmlinuz), "-initrd", str(image.initramfs), "-append", append,
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={share},mount_tag=sdlabshare,security_model=none,multidevs=remap",
        "-device", "virtio-rng-pci",
    ]


def _write_share(share: Path, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
    shutil.copy2(VM_DIR / "stage2.sh", share / "stage2.sh")
    lines = ["#!/bin/bash", f"cd {shlex.quote(str(cwd))} || exit 126"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append("exec " + " ".join(shlex.quote(a) for a in argv))
    (share / "cmd.sh").write_text("\n".join(lines) + "\n")


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        print(f"vm: qemu (pid {proc.pid}) did not die after SIGKILL", file=sys.stderr)


def run(argv: list[str], timeout_s: float = DEFAULT_TIMEOUT_S, cwd: Path = REPO, smp: int | None = None,
        memory_mib: int = MEMORY_MIB, env: dict[str, str] | None = None, echo: bool = True,
        cache: Path = CACHE_DIR, cpu: str = DEFAULT_CPU, extra_append: str = "") -> VmResult:
    """Boot, run argv in cwd (a host path, seen identically in the guest), return what happened."""
    if not argv:
        raise VmError("no command given (python -m vm.run -- CMD...)")
    if os.geteuid() != 0:
        raise VmError("the VM runs the netns tests as root inside; start it as root: sudo make vm-test")
    image = prepare(cache)
    smp = smp or min(2, os.cpu_count() or 1)
    console_log = cache / "console.log"
    share = Path(tempfile.mkdtemp(prefix="share-", dir=cache))
    t0 = time.monotonic()
    boot_s = [float("nan")]
    try:
        _write_share(share, argv, cwd, env or {})
        proc = subprocess.Popen(qemu_argv(image, share, smp, memory_mib, cpu, extra_append), stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)

        def pump() -> None:
            inside = False
            with open(console_log, "wb") as log:
                for raw in proc.stdout:
                    log.write(raw)
                    log.flush()
                    line = raw.decode(errors="replace").replace("\r", "")
                    if line.startswith(BEGIN):
                        inside, boot_s[0] = True, time.monotonic() - t0
                        continue
                    if line.startswith(END):
                        inside = False
                        continue
                    if echo and (inside or "SDLAB-VM-INIT-FAILED" in line or "Kernel panic" in line):
                        sys.stdout.write(line)
                        sys.stdout.flush()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        status = None
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            print(f"vm: timed out after {timeout_s:g} s; killing qemu (console: {console_log})", file=sys.stderr)
            status = EXIT_TIMEOUT
        except KeyboardInterrupt:
            print("vm: interrupted; killing qemu", file=sys.stderr)
            _kill_group(proc)
            raise
        finally:
            _kill_group(proc)
            reader.join(5)
        total_s = time.monotonic() - t0
        status_file, output_file = share / "status", share / "output"
        output = output_file.read_text(errors="replace") if output_file.exists() else ""
        if status is None:
            text = status_file.read_text().strip() if status_file.exists() else ""
            status = int(text) if text.lstrip("-").isdigit() else EXIT_NO_STATUS
            if status == EXIT_NO_STATUS:
                print(f"vm: the guest reported no exit status (console: {console_log})", file=sys.stderr)
        return VmResult(status, output, boot_s[0], total_s, console_log)
    finally:
        shutil.rmtree(share, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vm.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout-s", type=float, default=DEFAULT_TIMEOUT_S, help="kill the VM after this long")
    ap.add_argument("--smp", type=int, help="guest CPUs (default: min(2, host CPUs))")
    ap.add_argument("--memory-mib", type=int, default=MEMORY_MIB)
    ap.add_argument("--cpu", default=DEFAULT_CPU, help="qemu -cpu model (TCG)")
    ap.add_argument("--append", default="", help="extra guest kernel command line words")
    ap.add_argument("--cwd", type=Path, default=REPO, help="working directory in the guest (a host path)")
    ap.add_argument("--env", action="append", default=[], metavar="K=V", help="environment for CMD (repeatable)")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    env = {}
    for kv in a.env:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--env takes K=V, got {kv!r}")
        env[k] = v
    try:
        res = run(cmd, a.timeout_s, cwd=a.cwd.resolve(), smp=a.smp, memory_mib=a.memory_mib, env=env, cpu=a.cpu, extra_append=a.append)
    except VmError as e:
        print(f"vm: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    # TCG fidelity depends on idle host cores: the load says whether figures were taken on a busy host.
    print(f"vm: exit {res.status}; boot {res.boot_s:.1f} s, total {res.total_s:.1f} s (TCG); "
          f"host load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", file=sys.stderr)
    return res.status


if __name__ == "__main__":
    sys.exit(main())
