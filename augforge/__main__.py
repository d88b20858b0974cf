"""``python -m augforge`` (torchrun launches the stages this way)."""

from augforge.cli import main

main()
