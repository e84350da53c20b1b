"""``python -m worker`` is ``jobctl``."""

from worker.cli import main

main()
