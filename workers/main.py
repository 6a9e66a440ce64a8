"""Entry point for the Celery CLI: ``celery -A workers.main worker``.

The one module-level app exists because Celery's CLI imports an app by name; nothing in the request
path imports this module.
"""

from __future__ import annotations

from cds_service.settings import Settings
from workers.celery_app import create_celery_app

app = create_celery_app(Settings())
