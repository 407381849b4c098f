"""The HTTP admin daemon's app: token-protected JSON API (OpenAPI), status pages and metrics.

``create_app(ctx, token)`` builds it; ``enstratus_workers.daemons.admin`` serves it with uvicorn.
"""

from .app import create_app
from .config import AdminSettings, load_admin_settings, load_token
from .context import AdminContext

__all__ = ["AdminContext", "AdminSettings", "create_app", "load_admin_settings", "load_token"]
