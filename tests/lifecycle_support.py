"""A copy of the model registry with extra versions, for lifecycle tests (the real one is never
changed): each extra version reuses an existing version's verified files under a new name, with
its manifest entry edited (a broken alert level, failing validation figures)."""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sepsis_patients import MODEL_ROOT

Edit = Callable[[dict[str, Any]], None]
ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"
ADMIN_HASH = hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def registry_copy(
    target: Path, active: str, extra: dict[str, tuple[str, Edit]] | None = None
) -> Path:
    """``target`` holding the committed versions, ``extra`` {new name: (source version, edit)},
    and ``active`` as the manifest's active version."""
    manifest = json.loads((MODEL_ROOT / "manifest.json").read_text())
    target.mkdir(parents=True, exist_ok=True)
    for entry in manifest["versions"]:
        shutil.copytree(MODEL_ROOT / entry["version"], target / entry["version"])
    for name, (source, edit) in (extra or {}).items():
        entry = copy.deepcopy(next(v for v in manifest["versions"] if v["version"] == source))
        entry["version"] = name
        edit(entry)
        shutil.copytree(MODEL_ROOT / source, target / name)
        manifest["versions"].append(entry)
    manifest["active"] = active
    (target / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return target


def policy_file(target: Path, **drift: float) -> Path:
    """The shipped policy with some drift settings replaced (e.g. a short check interval)."""
    text = (MODEL_ROOT.parent / "cds_service" / "lifecycle" / "policy.toml").read_text()
    lines = []
    for line in text.splitlines():
        key = line.split("=")[0].strip()
        lines.append(f"{key} = {drift[key]}" if key in drift else line)
    target.write_text("\n".join(lines) + "\n")
    return target
