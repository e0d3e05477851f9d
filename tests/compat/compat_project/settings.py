"""Settings of the compatibility suite's Django project. The database is sluice (see conftest.py
for the SLUICE_* variables), under three aliases that share one PostgreSQL database (only
"default" is migrated):

- default: CONN_MAX_AGE = 0, a new connection per request;
- persistent: CONN_MAX_AGE = 60, the connection kept between requests;
- server_binding: CONN_MAX_AGE = 60, psycopg's server-side binding and prepare_threshold = 0, so
  every query Django runs is a named prepared statement (Django turns psycopg's automatic
  preparation off unless OPTIONS asks for it).

DISABLE_SERVER_SIDE_CURSORS is set as transaction pooling requires: outside a transaction,
Django's QuerySet.iterator() declares a WITH HOLD cursor, which lives on one server only, so its
next FETCH fails with 'portal "_django_curs_..." does not exist' once the client lands on another
server. The fourth alias, server_cursors, keeps server-side cursors for use inside
transaction.atomic only, where they work.
"""

import os

SECRET_KEY = "compat-suite-not-secret"
USE_TZ = True
TIME_ZONE = "UTC"
INSTALLED_APPS = ["compat_app"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _database(alias, conn_max_age, **options):
    return {
        "ENGINE": "django.db.backends.postgresql",
        "HOST": os.environ.get("SLUICE_HOST", "127.0.0.1"),
        "PORT": os.environ.get("SLUICE_PORT", "6432"),
        "NAME": os.environ.get("SLUICE_DB", "app"),
        "USER": os.environ.get("SLUICE_USER", "sluice_scram"),
        "PASSWORD": os.environ.get("SLUICE_PASSWORD", "scram_pw"),
        "CONN_MAX_AGE": conn_max_age,
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {"connect_timeout": 10, "application_name": f"compat-django-{alias}", **options},
    }


DATABASES = {
    "default": _database("default", 0),
    "persistent": _database("persistent", 60),
    "server_binding": _database("server_binding", 60, server_side_binding=True, prepare_threshold=0),
    "server_cursors": {**_database("server_cursors", 60), "DISABLE_SERVER_SIDE_CURSORS": False},
}
