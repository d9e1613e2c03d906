"""Print the minimum glibc version that the compiled wheels of a virtual environment need.

Usage: python glibc_requirement.py VENV

A wheel tagged manylinux_X_Y runs on glibc X.Y or later, and one with several such tags runs
where any of them does. A wheel built on this machine (tagged linux_<arch>) needs this
machine's glibc. The environment needs the maximum over its wheels, and packaging/build writes
that into the package's dependency on the C library.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

# Legacy aliases from PEP 600.
LEGACY_MANYLINUX = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
MANYLINUX = re.compile(r"manylinux_(\d+)_(\d+)_")
# Without compiled wheels the environment runs on any glibc that runs the interpreter, and
# manylinux1's 2.5 is the oldest version that the wheel tags name.
PURE_PYTHON_MINIMUM = (2, 5)


def build_machine_glibc() -> tuple[int, int]:
    name, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")
    if name != "glibc":
        raise SystemExit(f"glibc_requirement.py: this machine's C library is {name!r}, not glibc")
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


def platform_requirement(platform: str) -> tuple[int, int] | None:
    """Return the glibc version that a platform tag needs, or None when it names no Linux ABI."""
    for legacy, version in LEGACY_MANYLINUX.items():
        if platform.startswith(legacy + "_"):
            return version
    match = MANYLINUX.match(platform)
    if match:
        return int(match.group(1)), int(match.group(2))
    if platform.startswith("linux_"):
        return build_machine_glibc()
    return None


def wheel_requirement(wheel_metadata: Path) -> tuple[int, int] | None:
    requirements = []
    for line in wheel_metadata.read_text().splitlines():
        if not line.startswith("Tag:"):
            continue
        platform = line.partition(":")[2].strip().split("-")[2]
        requirement = platform_requirement(platform)
        if requirement is not None:
            requirements.append(requirement)
    return min(requirements, default=None)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    site_packages = list(Path(sys.argv[1]).glob("lib/python3.*/site-packages"))
    if len(site_packages) != 1:
        raise SystemExit(f"glibc_requirement.py: expected one lib/python3.*/site-packages in {sys.argv[1]}")
    requirements = [wheel_requirement(path) for path in site_packages[0].glob("*.dist-info/WHEEL")]
    major, minor = max((r for r in requirements if r is not None), default=PURE_PYTHON_MINIMUM)
    print(f"{major}.{minor}")


if __name__ == "__main__":
    main()
