"""Refuse a checkov run that scanned fewer objects than were rendered, or no Dockerfile.

checkov passes quietly when it finds nothing to scan (its Kubernetes runner skips paths under
hidden folders, for one), so a green scan is only believed when its report counts every object.

Usage: python scan_coverage.py CHECKOV_REPORT.json RENDERED.yaml ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml


def main() -> int:
    report = json.loads(Path(sys.argv[1]).read_text())
    results = report if isinstance(report, list) else [report]
    runs = {r["check_type"]: r["summary"] for r in results}
    objects = sum(
        1 for path in sys.argv[2:] for doc in yaml.safe_load_all(Path(path).read_text()) if doc
    )
    scanned = runs.get("kubernetes", {}).get("resource_count", 0)
    if scanned < objects or runs.get("dockerfile", {}).get("resource_count", 0) < 1:
        print(
            f"ERROR checkov scanned {scanned} of {objects} rendered objects "
            f"(runs: {sorted(runs)}): refusing a partial scan",
            file=sys.stderr,
        )
        return 1
    print(f"checkov scanned all {scanned} rendered objects and the Dockerfile")
    return 0


if __name__ == "__main__":
    sys.exit(main())
