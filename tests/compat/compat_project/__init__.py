"""A minimal Django project for the compatibility suite: settings only, one app (compat_app)."""
