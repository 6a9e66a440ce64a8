"""The command line: ``cds-service serve | dev | mint-token``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True)


@app.command()
def serve() -> None:
    """Run the API with uvicorn, configured from the environment (CDS_*)."""
    import uvicorn  # noqa: PLC0415 - keep `mint-token` fast

    from cds_service.app import create_app  # noqa: PLC0415
    from cds_service.logging_setup import configure_logging  # noqa: PLC0415
    from cds_service.settings import Settings  # noqa: PLC0415

    settings = Settings()
    configure_logging(settings.log_level, settings.log_json)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        proxy_headers=False,
        server_header=False,
    )


@app.command()
def dev() -> None:
    """What `make run` runs: private Redis (unless REDIS_URL is set), one worker, the API."""
    from cds_service.devrun import run_dev  # noqa: PLC0415

    raise typer.Exit(run_dev())


@app.command("mint-token")
def mint_token(
    aud: Annotated[str, typer.Option(help="The exact URL the token is for.")],
    keys_dir: Annotated[Path, typer.Option(help="Where `make run` keeps the dev key.")] = Path(
        ".dev/keys"
    ),
    lifetime: Annotated[int, typer.Option(help="Seconds until it expires.")] = 300,
) -> None:
    """Print a JWT signed by the local development key (created by `make run`)."""
    from cds_service.security.dev_keys import ensure_dev_keys  # noqa: PLC0415

    keys, _ = ensure_dev_keys(keys_dir)
    typer.echo(keys.mint(aud, lifetime_s=lifetime))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
