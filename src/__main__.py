"""`python -m graftline` is the `graftline` command."""

from graftline.console.cli import main

main()
