"""What gunicorn serves: `gunicorn -c gunicorn.conf.py wsgi:app`."""

from app import create_app

app = create_app(cli=False)  # serving needs no migration tooling
