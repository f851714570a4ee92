"""Fetch axe-core's ``axe.min.js`` from the npm registry, checked against the registry's integrity hash (no npm needed).

The browser tests inject it into the Model promotion page for their accessibility check (``make browser``)::

    python -m scripts.axe_core 4.14.1 .cache/axe-core-4.14.1/axe.min.js
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

REGISTRY = "https://registry.npmjs.org/axe-core"


def fetch(version: str, into: Path) -> None:
    with urllib.request.urlopen(f"{REGISTRY}/{version}", timeout=60) as response:
        dist = json.load(response)["dist"]
    with urllib.request.urlopen(dist["tarball"], timeout=120) as response:
        tarball = response.read()
    algorithm, _, expected = dist["integrity"].partition("-")
    if base64.b64encode(hashlib.new(algorithm, tarball).digest()).decode() != expected:
        raise SystemExit(f"axe-core {version}: the tarball does not match the registry's {algorithm} integrity hash")
    with tarfile.open(fileobj=io.BytesIO(tarball), mode="r:gz") as archive:
        member = archive.extractfile("package/axe.min.js")
        if member is None:
            raise SystemExit(f"axe-core {version}: no package/axe.min.js in the tarball")
        into.parent.mkdir(parents=True, exist_ok=True)
        into.write_bytes(member.read())


if __name__ == "__main__":
    fetch(sys.argv[1], Path(sys.argv[2]))
