"""``python -m prunekit.cli``: the ``prunekit`` command."""

from . import main

main()
