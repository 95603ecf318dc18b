"""`python -m conveyor …` runs the CLI."""

from conveyor.cli import main

main()
