"""``cds-admin``: the admin API from a terminal (registry operations, audit, drift, shadow).

A thin client of ``/admin/*``, so the CLI and the API share one implementation, one set of
gates and one audit trail: every change it makes is recorded under the name its token belongs
to. The token comes from ``CDS_ADMIN_TOKEN`` (never an argument: it would stay in the shell's
history and in ``ps``); the API from ``CDS_ADMIN_URL`` or ``--url``.

    export CDS_ADMIN_URL=https://sepsis-cds.hospital.example CDS_ADMIN_TOKEN=...
    cds-admin versions
    cds-admin promote sepsis-gbdt-AB-2 --to shadow --reason "retrained on 2026 data"
    cds-admin kill sepsis-patient-view --reason "incident 4711: wrong lactate units"
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDS_ADMIN_", extra="ignore")
    url: str = "http://127.0.0.1:8080"
    token: SecretStr | None = None
    timeout_s: float = 30.0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cds-admin", description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="the API's base URL (default: $CDS_ADMIN_URL)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("state", help="the deployment state and this API process's view of it")
    commands.add_parser("versions", help="registered versions, roles, gates, validation figures")
    card = commands.add_parser("card", help="a version's model card (Markdown)")
    card.add_argument("version")
    promote = commands.add_parser("promote", help="shadow → canary → active, through the gates")
    promote.add_argument("version")
    promote.add_argument("--to", required=True, choices=["shadow", "canary", "active"])
    for name, what in (
        ("rollback", "back to the previous active version"),
        ("withdraw-canary", "end the canary"),
        ("stop", "stop the sepsis cards (every version)"),
        ("resume", "show the sepsis cards again"),
    ):
        commands.add_parser(name, help=what)
    share = commands.add_parser("canary-share", help="share of patients getting the canary")
    share.add_argument("share", type=float)
    for name, what in (("kill", "switch a service's cards off"), ("revive", "switch them on")):
        sub = commands.add_parser(name, help=what)
        sub.add_argument("service")
    audit = commands.add_parser("audit", help="recent audit events")
    audit.add_argument("--stream", choices=["lifecycle", "calls"], default="lifecycle")
    audit.add_argument("--count", type=int, default=20)
    commands.add_parser("drift", help="drift figures of the active and canary versions")
    commands.add_parser("shadow", help="the shadow comparison")
    for name, sub in commands.choices.items():
        if name in {"promote", "rollback", "withdraw-canary", "stop", "resume", "canary-share",
                    "kill", "revive"}:  # fmt: skip
            sub.add_argument("--reason", required=True, help="why (kept in the audit trail)")
    return parser


def _request(args: argparse.Namespace) -> tuple[str, str, dict[str, Any] | None, dict[str, Any]]:
    """(method, path, JSON body, query) for the parsed command."""
    command = args.command
    if command in {"state", "versions", "drift", "shadow"}:
        return "GET", f"/admin/{command}", None, {}
    if command == "card":
        return "GET", f"/admin/versions/{args.version}/card", None, {}
    if command == "audit":
        return "GET", "/admin/audit", None, {"stream": args.stream, "count": args.count}
    fields = {
        "promote": ("version", "to"),
        "canary-share": ("share",),
        "kill": ("service",),
        "revive": ("service",),
    }.get(command, ())
    body = {name: getattr(args, name) for name in (*fields, "reason")}
    return "POST", f"/admin/{command}", body, {}


def _problem(response: httpx.Response) -> str:
    try:
        issues = response.json().get("issue", [])
        return "; ".join(str(i.get("diagnostics", "")) for i in issues) or response.text
    except ValueError:
        return response.text


def main(argv: Sequence[str] | None = None, settings: CliSettings | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings or CliSettings()
    if settings.token is None:
        print("cds-admin: set CDS_ADMIN_TOKEN to your admin token", file=sys.stderr)
        return 2
    method, path, body, query = _request(args)
    base = (args.url or settings.url).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.token.get_secret_value()}"}
    try:
        with httpx.Client(timeout=settings.timeout_s, follow_redirects=False) as client:
            response = client.request(method, base + path, json=body, params=query, headers=headers)
    except httpx.HTTPError as exc:
        print(f"cds-admin: {base} unreachable: {type(exc).__name__}", file=sys.stderr)
        return 1
    if response.status_code >= 400:
        print(f"cds-admin: {response.status_code}: {_problem(response)}", file=sys.stderr)
        return 1
    if response.headers.get("content-type", "").startswith("text/markdown"):
        print(response.text)
    else:
        print(json.dumps(response.json(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
