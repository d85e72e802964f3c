"""The VM's kernel and initramfs, built once and cached under ~/.cache/sdlab/vm.

Why a VM at all: the machines this lab is developed on have kernels without
`sch_netem`, so the netem backend (the reference) could never be tested
there.  A Debian kernel in qemu has every qdisc as a module; the guest runs
the host's own userland (root shared over virtio-9p), so the repo, its .venv
and iproute2 are the same files.

What is built (DESIGN.md "The link", facts measured on such a machine):
* the kernel: `apt-get download` of the image package `linux-image-amd64`
  depends on (the unsigned one: same files, no signing wrapper), unpacked
  with `dpkg-deb -x`; the package ships no modules.dep, so `depmod -b`.
* the initramfs: static busybox, vm/init.sh as /init, and the modules the
  guest needs copied in dependency order (resolved from modules.dep, so the
  order is the kernel's, not a hand-kept list).  Packed with busybox's cpio
  (the host has no cpio) and gzip (built into the kernel).
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

CACHE_DIR = Path(os.environ.get("SDLAB_VM_CACHE", Path.home() / ".cache" / "sdlab" / "vm"))
VM_DIR = Path(__file__).resolve().parent
HOST_PACKAGES = {"qemu-system-x86_64": "qemu-system-x86", "busybox": "busybox-static", "depmod": "kmod"}
BUSYBOX = Path("/usr/bin/busybox")
# Everything the guest loads, by module name (dependencies are added from modules.dep).
MODULES = ("virtio_pci", "virtio-rng", "9pnet_virtio", "9p", "overlay", "tun", "veth", "ifb",
           "sch_netem", "sch_tbf", "sch_htb", "sch_ingress", "act_mirred", "cls_u32", "cls_matchall")
APT_TIMEOUT_S = 600


class VmError(Exception):
    """The VM cannot be prepared or run; the message says what to install or fix."""


@dataclass(frozen=True)
class Image:
    kernel_version: str      # e.g. 6.1.0-56-amd64
    kernel_dir: Path         # the unpacked package (boot/, lib/modules/)
    vmlinuz: Path
    initramfs: Path


def _run(argv: list[str], timeout_s: float = APT_TIMEOUT_S, cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=cwd,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        raise VmError(f"{' '.join(argv)} did not finish within {timeout_s:g} s") from None
    except FileNotFoundError:
        raise VmError(f"{argv[0]} is not installed") from None
    if p.returncode:
        raise VmError(f"{' '.join(argv)} failed ({p.returncode}): {(p.stderr or p.stdout).strip()[-800:]}")
    return p.stdout


def ensure_host_packages() -> None:
    """qemu, static busybox and kmod from apt, if any is missing (needs root, as the VM does)."""
    missing = sorted({pkg for tool, pkg in HOST_PACKAGES.items() if shutil.which(tool) is None
                      and not (tool == "busybox" and BUSYBOX.exists())})
    if not missing:
        return
    if os.geteuid() != 0:
        raise VmError(f"missing {', '.join(missing)}: sudo apt-get install {' '.join(missing)}")
    print(f"vm: installing {' '.join(missing)} with apt-get", flush=True)
    _run(["apt-get", "update", "-qq"])
    _run(["apt-get", "install", "-y", "-qq", *missing])


def kernel_package() -> str:
    """The image package the metapackage points at, e.g. linux-image-6.1.0-56-amd64-unsigned."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"], timeout_s=60)
    m = re.search(r"Depends:\s*(linux-image-\d[\w.-]*-amd64)\b", out)
    if not m:
        raise VmError("apt-cache does not know linux-image-amd64 (run apt-get update; a Debian apt source is "
                      "needed)")
    return m.group(1) + "-unsigned"


def ensure_kernel(cache: Path = CACHE_DIR) -> tuple[str, Path]:
    """Download + unpack + depmod the Debian kernel once; returns (version, unpacked dir)."""
    cache.mkdir(parents=True, exist_ok=True)
    done = sorted(cache.glob("kernel-*/.sdlab-ready"))
    if done:
        kdir = done[-1].parent
        return kdir.name[len("kernel-"):], kdir
    pkg = kernel_package()
    debs = list(cache.glob(f"{pkg}_*.deb"))
    if not debs:
        print(f"vm: downloading {pkg}", flush=True)
        _run(["apt-get", "download", pkg], cwd=cache)
        debs = list(cache.glob(f"{pkg}_*.deb"))
        if not debs:
            raise VmError(f"apt-get download {pkg} left no .deb in {cache}")
    version = pkg[len("linux-image-"):-len("-unsigned")]
    kdir = cache / f"kernel-{version}"
    if kdir.exists():
        shutil.rmtree(kdir)
    _run(["dpkg-deb", "-x", str(debs[0]), str(kdir)])
    _run(["depmod", "-b", str(kdir), version], timeout_s=120)
    (kdir / ".sdlab-ready").write_text(pkg + "\n")
    return version, kdir


def module_order(modules_dir: Path, wanted: tuple[str, ...] = MODULES) -> list[Path]:
    """Module files (relative to modules_dir) in an order busybox insmod can load: dependencies first."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (modules_dir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[Path(path).name.split(".ko")[0]] = path
    order: list[str] = []

    def visit(path: str, stack: tuple[str, ...]) -> None:
        if path in order:
            return
        if path in stack:
            raise VmError(f"dependency cycle in modules.dep at {path}")
        # modules.dep lists a module's dependencies nearest-first; load the farthest first.
        for d in reversed(deps.get(path, [])):
            visit(d, stack + (path,))
        order.append(path)

    for name in wanted:
        path = by_name.get(name) or by_name.get(name.replace("-", "_")) or by_name.get(name.replace("_", "-"))
        if path is None:
            raise VmError(f"module {name} is not in {modules_dir} (this kernel builds it in or lacks it)")
        visit(path, ())
    return [Path(p) for p in order]


def _inputs_digest(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def ensure_initramfs(version: str, kdir: Path, cache: Path = CACHE_DIR) -> Path:
    """busybox + /init + modules as a gzip'd newc cpio; rebuilt when init.sh or the kernel changes."""
    mdir = kdir / "lib" / "modules" / version
    mods = module_order(mdir)
    digest = _inputs_digest([VM_DIR / "init.sh", BUSYBOX, mdir / "modules.dep"])
    out = cache / f"initramfs-{version}-{digest}.gz"
    if out.exists():
        return out
    root = cache / "initramfs-root"
    if root.exists():
        shutil.rmtree(root)
    for d in ("bin", "dev", "proc", "sys", "modules", "lower", "rw", "newroot"):
        (root / d).mkdir(parents=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    shutil.copy2(VM_DIR / "init.sh", root / "init")
    (root / "init").chmod(0o755)
    names = []
    for rel in mods:
        src = mdir / rel
        if src.suffix != ".ko":
            raise VmError(f"{src.name} is compressed; busybox insmod here takes plain .ko files")
        shutil.copy2(src, root / "modules" / src.name)
        names.append(src.name)
    (root / "modules" / "order").write_text("\n".join(names) + "\n")
    listing = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    try:
        p = subprocess.run([str(BUSYBOX), "cpio", "-o", "-H", "newc"], input="\n".join(listing).encode() + b"\n",
                           capture_output=True, cwd=root, timeout=120)
    except subprocess.TimeoutExpired:
        raise VmError("packing the initramfs with busybox cpio took over 120 s") from None
    if p.returncode:
        raise VmError(f"busybox cpio failed: {p.stderr.decode(errors='replace')[-400:]}")
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(p.stdout, compresslevel=6))
    tmp.rename(out)
    shutil.rmtree(root)
    return out


def prepare(cache: Path = CACHE_DIR) -> Image:
    """Everything a boot needs, downloaded/built on first use (later calls are file checks)."""
    ensure_host_packages()
    version, kdir = ensure_kernel(cache)
    vmlinuz = kdir / "boot" / f"vmlinuz-{version}"
    if not vmlinuz.exists():
        raise VmError(f"{vmlinuz} missing: remove {kdir} and run again")
    return Image(version, kdir, vmlinuz, ensure_initramfs(version, kdir, cache))
