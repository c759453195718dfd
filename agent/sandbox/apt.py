"""The host's apt: which Debian archive it uses (debootstrap builds from the same one), and
installing a few packages.

Both image builders (the qemu guest image and the docker base image) read the archive here; each
decides what a machine without apt lists gets.
"""

from __future__ import annotations

import os
import subprocess

DEBIAN_ARCHIVE = "http://deb.debian.org/debian/"


def main_archive() -> tuple[str, str] | None:
    """(URI, suite) of the main Debian archive apt is configured with; None without apt lists.

    The plain suite (bookworm) wins over -updates and -security.
    """
    out = subprocess.run(
        ["apt-get", "indextargets", "--format", "$(REPO_URI)\t$(RELEASE)\t$(COMPONENT)", "Created-By: Packages"],
        capture_output=True, text=True, check=False,
    ).stdout
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[2] == "main" and "-" not in parts[1] and "security" not in parts[0]:
            return parts[0], parts[1]
    return None


def apt_install(packages: list[str]) -> subprocess.CompletedProcess[str]:
    """``apt-get install`` without recommends; when it fails, ``apt-get update`` and once more."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    return done
