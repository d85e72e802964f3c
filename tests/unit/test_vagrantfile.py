"""The Vagrantfile: the settings a newcomer on macOS/Windows relies on, and `vagrant validate` when vagrant exists.

Unit tests install nothing: where vagrant is not installed the validate test
is skipped with the reason (vagrant is a tool for hosts without network
namespaces, not a dependency of the lab).  Validation runs on a copy in a
temporary directory, so no `.vagrant/` appears in the repo.
"""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

VAGRANTFILE = Path(__file__).resolve().parents[2] / "Vagrantfile"


@pytest.fixture(scope="module")
def text() -> str:
    return VAGRANTFILE.read_text()


def _setting(text: str, pattern: str) -> str:
    m = re.search(pattern, text)
    assert m, f"Vagrantfile has no match for {pattern!r}"
    return m.group(1)


def test_debian_12_box(text):
    assert _setting(text, r'config\.vm\.box\s*=\s*"([^"]+)"') == "debian/bookworm64"


def test_memory_and_cpus_fit_the_embedded_models(text):
    mem = int(_setting(text, r"SDLAB_MEMORY_MIB\s*=\s*(\d+)"))
    cpus = int(_setting(text, r"SDLAB_CPUS\s*=\s*(\d+)"))
    assert mem >= 8192 and cpus >= 2
    for provider in ("virtualbox", "libvirt"):
        block = _setting(text, rf'provider "{provider}" do \|(\w+)\|')
        assert f"{block}.memory = SDLAB_MEMORY_MIB" in text and f"{block}.cpus = SDLAB_CPUS" in text


def test_repo_at_vagrant_without_the_hosts_venv(text):
    line = _setting(text, r'(config\.vm\.synced_folder "\.", "/vagrant".*(?:\n\s+.*)?)')
    assert '".venv/"' in line, "the host's .venv (another OS's binaries) must not be synced"


def test_provisioning_installs_the_lab(text):
    m = re.search(r"<<-SHELL\n(.*?)\n\s*SHELL", text, re.S)
    assert m, "no inline shell provisioner"
    script = m.group(1)
    apt = _setting(script, r"apt-get install[^\n]*?((?:python3-venv|iproute2|ethtool|make|sudo)[^\n]*)")
    for pkg in ("python3-venv", "iproute2", "ethtool", "make", "sudo"):
        assert pkg in apt.split(), f"{pkg} missing from the provisioning apt-get install"
    assert re.search(r"cd /vagrant\s*\n\s*make setup", script)
    assert "modprobe sch_netem" in script
    assert "set -euo pipefail" in script


def _validate(vagrant: str, content: str, tmp_path: Path) -> subprocess.CompletedProcess:
    work = tmp_path / "vf"
    work.mkdir()
    (work / "Vagrantfile").write_text(content)
    env = {**os.environ, "VAGRANT_HOME": str(tmp_path / "vagrant-home"), "VAGRANT_CHECKPOINT_DISABLE": "1"}
    # --ignore-provider: no VirtualBox/libvirt here; their blocks are still parsed as Ruby.
    return subprocess.run([vagrant, "validate", "--ignore-provider"], cwd=work, capture_output=True, text=True,
                          timeout=120, env=env)


def test_vagrant_validate(text, tmp_path):
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (apt-get install vagrant, or HashiCorp's package)")
    ok = _validate(vagrant, text, tmp_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "validated successfully" in ok.stdout
    # The check has teeth: the same file without a box does not validate.
    broken = re.sub(r'config\.vm\.box\s*=.*\n', "", text)
    (tmp_path / "broken").mkdir()
    bad = _validate(vagrant, broken, tmp_path / "broken")
    assert bad.returncode != 0 and "box" in (bad.stdout + bad.stderr).lower()
