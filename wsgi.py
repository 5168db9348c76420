"""The WSGI entry point: `gunicorn wsgi:app`, and what `flask` finds."""

from uniquerand import create_app

app = create_app()
