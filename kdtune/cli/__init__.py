"""The ``kdtune`` command line (typer): thin layers over ``kdtune.api`` and friends.

``app`` (the entry point, ``kdtune.cli.app:main``) · ``common`` (console, one-line errors) ·
one module per command group: ``sweep``, ``tracking`` (best, promote, ui, sweep list),
``cluster`` (sweep submit/status/logs/stop).
"""
