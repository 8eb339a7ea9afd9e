"""Superset configuration for the clickstream stack (compose profile `superset` and the
import test). Everything secret comes from the environment; nothing here has a default
password.
"""

import os

_PLACEHOLDERS = {"", "__RANDOM__", "changeme", "change-me", "secret"}

SECRET_KEY = os.environ.get("SUPERSET_SECRET_KEY", "")
if SECRET_KEY in _PLACEHOLDERS or len(SECRET_KEY) < 32:
    raise RuntimeError(
        "SUPERSET_SECRET_KEY must be set to a random string of at least 32 characters "
        "(e.g. `openssl rand -base64 42`)"
    )

# Superset's own metadata (users, charts, dashboards); SQLite in SUPERSET_HOME unless a
# PostgreSQL URL is given.
_HOME = os.environ.get("SUPERSET_HOME", os.path.expanduser("~/.superset"))
SQLALCHEMY_DATABASE_URI = os.environ.get(
    "SUPERSET_METADATA_DB_URI", f"sqlite:///{os.path.join(_HOME, 'superset.db')}"
)

# The analytics connection is read-only (the reader role); SQL Lab must not offer to write.
PREVENT_UNSAFE_DB_CONNECTIONS = True
SQLLAB_TIMEOUT = 30
SUPERSET_WEBSERVER_TIMEOUT = 60
ROW_LIMIT = 10000

# Session cookies: HttpOnly always; Secure when served over HTTPS (set by the operator).
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = os.environ.get("SUPERSET_COOKIE_SECURE", "false").lower() == "true"
WTF_CSRF_ENABLED = True
TALISMAN_ENABLED = False

# No example data, no telemetry.
SUPERSET_LOAD_EXAMPLES = False
FEATURE_FLAGS = {"DASHBOARD_RBAC": False}
