"""Validate the custom resources in rendered manifests, which kubernetes-validate only warns about.

Each custom resource (an apiVersion group with a dot that is not a Kubernetes group) must have a
schema in crd-schemas/, named ``<group>_<version>_<Kind>.json``; one without is an error, so a new
kind of custom resource cannot slip past the checks. Runs in the ``validate`` tool venv.

Usage: python validate_crs.py RENDERED.yaml ...
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).with_name("crd-schemas")


def is_custom(api_version: str) -> bool:
    group = api_version.rpartition("/")[0]
    return "." in group and not group.endswith(".k8s.io")


def schema_for(api_version: str, kind: str) -> dict[str, Any] | None:
    group, _, version = api_version.rpartition("/")
    path = SCHEMAS / f"{group}_{version}_{kind}.json"
    return json.loads(path.read_text()) if path.exists() else None


def check(paths: list[Path]) -> list[str]:
    problems: list[str] = []
    for path in paths:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or not is_custom(doc.get("apiVersion", "")):
                continue
            api_version, kind = doc["apiVersion"], doc.get("kind", "")
            name = f"{path.name}: {kind}/{doc.get('metadata', {}).get('name')}"
            schema = schema_for(api_version, kind)
            if schema is None:
                problems.append(f"{name}: no schema for {api_version} {kind} in {SCHEMAS}")
                continue
            validator = jsonschema.Draft202012Validator(schema)
            errors = sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
            for error in errors:
                where = ".".join(map(str, error.absolute_path))
                problems.append(f"{name}: {where}: {error.message}")
            if not errors:
                print(f"custom resource {name} is valid against {api_version} {kind}")
    return problems


def main() -> int:
    problems = check([Path(p) for p in sys.argv[1:]])
    for problem in problems:
        print(f"ERROR {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
