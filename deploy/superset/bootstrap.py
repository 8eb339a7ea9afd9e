"""Prepares a Superset for the clickstream stack: the admin user (password from the
environment, never on a command line) and the dashboard under `dashboard/` with its
`clickstream` database pointed at the analytics reader role.

Run after `superset db upgrade` and `superset init`, with SUPERSET_CONFIG_PATH set:

    CLICKSTREAM_SUPERSET_DB_URL=postgresql+psycopg2://clickstream_reader:...@host:5432/db \
    SUPERSET_ADMIN_PASSWORD=... python bootstrap.py

Idempotent: an existing admin is left as is and the import overwrites the shipped charts.
"""

import os
import sys
from pathlib import Path

from sqlalchemy.engine.url import make_url

from superset.app import create_app

EXPORT = Path(os.environ.get("CLICKSTREAM_SUPERSET_EXPORT", Path(__file__).with_name("dashboard")))
DB_FILE = "databases/clickstream.yaml"
PLACEHOLDERS = {"", "__RANDOM__", "admin", "changeme", "change-me", "password"}


def env(name: str) -> str:
    value = os.environ.get(name, "")
    if value in PLACEHOLDERS:
        sys.exit(f"bootstrap: {name} must be set (and not to a placeholder)")
    return value


def bundle(db_url: str) -> tuple[dict[str, str], dict[str, str]]:
    """The export's YAML files by relative path, the database file pointing at `db_url`
    with the password masked as in an export; and the password, passed on the side."""
    import yaml

    url = make_url(db_url)
    contents = {}
    for path in sorted(EXPORT.rglob("*.yaml")):
        rel = path.relative_to(EXPORT).as_posix()
        contents[rel] = path.read_text()
    if DB_FILE not in contents or "metadata.yaml" not in contents:
        sys.exit(f"bootstrap: {EXPORT} is not a Superset dashboard export")
    db = yaml.safe_load(contents[DB_FILE])
    db["sqlalchemy_uri"] = url.set(password="XXXXXXXXXX").render_as_string(hide_password=False)
    contents[DB_FILE] = yaml.safe_dump(db, sort_keys=False)
    return contents, {DB_FILE: url.password or ""}


def main() -> None:
    db_url = env("CLICKSTREAM_SUPERSET_DB_URL")
    if (make_url(db_url).password or "").lower() in PLACEHOLDERS or "__RANDOM__" in db_url:
        sys.exit("bootstrap: the password in CLICKSTREAM_SUPERSET_DB_URL is a placeholder")
    admin = os.environ.get("SUPERSET_ADMIN_USER", "admin")
    admin_password = env("SUPERSET_ADMIN_PASSWORD")
    contents, passwords = bundle(db_url)

    app = create_app()
    with app.app_context():
        from flask import g

        from superset import security_manager
        from superset.commands.dashboard.importers.v1 import ImportDashboardsCommand

        user = security_manager.find_user(username=admin)
        if user is None:
            role = security_manager.find_role("Admin")
            if role is None:
                sys.exit("bootstrap: no Admin role; run `superset init` first")
            user = security_manager.add_user(
                admin, "Clickstream", "Admin", f"{admin}@localhost", role, password=admin_password
            )
            print(f"bootstrap: created admin user {admin}")
        g.user = user
        ImportDashboardsCommand(contents, passwords=passwords, overwrite=True).run()
        charts = sum(1 for k in contents if k.startswith("charts/"))
        print(f"bootstrap: imported dashboard 'clickstream' ({charts} charts) from {EXPORT}")


if __name__ == "__main__":
    main()
