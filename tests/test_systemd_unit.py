"""The files under systemd/: the unit passes systemd-analyze, the sysusers and tmpfiles snippets
apply to a scratch root, and the example environment file documents every variable."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from grantexd.config import ConfigError, load_config
from grantexd.crypto.keys import generate_signing_key, private_key_pem
from tests.support import REPOSITORY

SYSTEMD = REPOSITORY / "systemd"
UNIT = SYSTEMD / "grantexd.service"
INSTALLED_EXECUTABLE = "/opt/grantexd/bin/grantexd"


def _unit_settings(text: str) -> dict[str, list[str]]:
    """Return "Section.Key" -> values in file order; systemd allows a key more than once."""
    settings: dict[str, list[str]] = {}
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return settings


def _verify(unit_text: str, directory: Path) -> tuple[int, list[str]]:
    """Run systemd-analyze verify on ``unit_text``; return its status and the lines about the unit.

    systemd-analyze (252) exits 0 for unknown keys and unparsable values and only prints them,
    so the lines that mention the unit are the real result. It also rejects a unit whose
    ExecStart binary does not exist, and /opt/grantexd is not installed on a test machine, so
    the copy it checks points ExecStart at this virtualenv's grantexd (or Python) instead.
    """
    installed = Path(sys.executable).parent / "grantexd"
    executable = installed if installed.exists() else Path(sys.executable)
    assert unit_text.count(INSTALLED_EXECUTABLE) == 1
    copy = directory / "grantexd.service"
    copy.write_text(unit_text.replace(INSTALLED_EXECUTABLE, str(executable)))
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    output = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in output if "grantexd.service" in line]


needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


@needs_systemd_analyze
def test_unit_passes_verify(tmp_path: Path) -> None:
    status, complaints = _verify(UNIT.read_text(), tmp_path)
    assert complaints == []
    assert status == 0


@needs_systemd_analyze
def test_verify_reports_unknown_key(tmp_path: Path) -> None:
    # Guards the test above: this systemd-analyze must report a bad line, not pass it silently.
    broken = UNIT.read_text().replace("Restart=on-failure", "Restart=on-failure\nRestartEvery=5s")
    _status, complaints = _verify(broken, tmp_path)
    assert any("RestartEvery" in line for line in complaints), complaints


def test_unit_runs_installed_daemon() -> None:
    settings = _unit_settings(UNIT.read_text())
    assert settings["Service.Type"] == ["notify"]
    assert settings["Service.ExecStart"] == [f"{INSTALLED_EXECUTABLE} serve"]
    assert settings["Service.User"] == ["grantexd"]
    assert settings["Service.EnvironmentFile"] == ["/etc/grantexd/grantexd.env"]
    assert settings["Service.Restart"] == ["on-failure"]


def test_unit_stop_timeout_covers_drain() -> None:
    settings = _unit_settings(UNIT.read_text())
    minimal = {
        "DATABASE_URL": "postgresql://grantex@127.0.0.1:5432/grantex",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "AUTO_GENERATE_KEYS": "true",
    }
    grace_seconds = load_config(minimal).shutdown_grace_seconds
    (timeout,) = settings["Service.TimeoutStopSec"]
    timeout_seconds = float(timeout.removesuffix("s"))
    # The daemon cancels requests that outlive the grace period 5 s after it, then closes its
    # clients and flushes traces. The 10 s margin for those steps is an estimate.
    margin_seconds = 10
    assert timeout_seconds >= grace_seconds + 5 + margin_seconds, f"TimeoutStopSec={timeout}, grace {grace_seconds:g} s"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("MemoryDenyWriteExecute", "yes"),
    ],
)
def test_unit_hardening(key: str, expected: str) -> None:
    settings = _unit_settings(UNIT.read_text())
    assert settings.get(f"Service.{key}") == [expected]


def test_unit_system_call_filter() -> None:
    settings = _unit_settings(UNIT.read_text())
    assert settings["Service.SystemCallFilter"][0] == "@system-service"


class _RecordingEnvironment(Mapping[str, str]):
    """An empty environment that records every variable name looked up in it."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.names.add(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _variables_read_by_config() -> set[str]:
    environment = _RecordingEnvironment()
    with pytest.raises(ConfigError):
        load_config(environment)
    # systemd sets CREDENTIALS_DIRECTORY itself when the unit has LoadCredential=.
    return environment.names - {"CREDENTIALS_DIRECTORY"}


def test_config_reads_known_variables() -> None:
    # Guards the two tests below against a recording that finds nothing.
    assert {"DATABASE_URL", "REDIS_URL", "RSA_PRIVATE_KEY", "SHUTDOWN_GRACE_PERIOD"} <= _variables_read_by_config()


def test_env_example_lists_every_variable() -> None:
    text = (SYSTEMD / "grantexd.env.example").read_text()
    listed = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", text, flags=re.MULTILINE))
    read = _variables_read_by_config()
    assert sorted(read - listed) == [], "variables missing from grantexd.env.example"
    assert sorted(listed - read) == [], "grantexd.env.example lists variables that config.py does not read"


def test_env_example_values_valid(tmp_path: Path) -> None:
    text = (SYSTEMD / "grantexd.env.example").read_text()
    environment = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", text, flags=re.MULTILINE))
    assert environment["RSA_PRIVATE_KEY"] == "/etc/grantexd/rsa_private_key.pem"
    key_path = tmp_path / "rsa_private_key.pem"
    key_path.write_text(private_key_pem(generate_signing_key()))
    environment["RSA_PRIVATE_KEY"] = str(key_path)

    config = load_config(environment)
    assert config.is_production


def test_readme_lists_every_variable() -> None:
    text = (REPOSITORY / "README.rst").read_text()
    documented = set(re.findall(r"``([A-Z][A-Z0-9_]+)``", text))
    assert sorted(_variables_read_by_config() - documented) == [], "variables missing from README.rst"


needs_root_and_systemd_tools = pytest.mark.skipif(
    shutil.which("systemd-sysusers") is None or shutil.which("systemd-tmpfiles") is None or os.geteuid() != 0,
    reason="needs systemd-sysusers, systemd-tmpfiles and root (tmpfiles sets file owners)",
)


@needs_root_and_systemd_tools
def test_sysusers_and_tmpfiles_apply(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    # With --root, both tools read and write only below the scratch root.
    subprocess.run(
        ["systemd-sysusers", f"--root={root}", str(SYSTEMD / "grantexd.sysusers.conf")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc" / "passwd").read_text().splitlines()}
    assert "grantexd" in users
    assert users["grantexd"][6] == "/usr/sbin/nologin"
    group_id = int(users["grantexd"][3])

    tmpfiles = ["systemd-tmpfiles", f"--root={root}", "--create", str(SYSTEMD / "grantexd.tmpfiles.conf")]
    subprocess.run(tmpfiles, check=True, capture_output=True, timeout=60)
    directory = root / "etc" / "grantexd"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o750
    assert directory.stat().st_gid == group_id

    environment_file = directory / "grantexd.env"
    environment_file.write_text("GRANTEX_ENV=production\n")
    environment_file.chmod(0o644)
    subprocess.run(tmpfiles, check=True, capture_output=True, timeout=60)
    assert stat.S_IMODE(environment_file.stat().st_mode) == 0o600
