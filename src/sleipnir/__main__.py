"""``python -m sleipnir`` runs the command line."""

from .cli import main

main()
