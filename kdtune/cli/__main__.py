"""``python -m kdtune.cli``: the same as the ``kdtune`` command."""

from kdtune.cli.app import main

main()
