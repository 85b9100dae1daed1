"""The web service: ``deepmetric serve INDEX_DIR`` (FastAPI under uvicorn), see :mod:`deepmetric.service.app`.

Importing this package needs nothing beyond deepmetric; :func:`deepmetric.service.app.create_app` needs
``fastapi`` and ``python-multipart`` (``pip install deepmetric[serve]``)."""
