"""`python -m secureig`: the same as the `secureig` command."""

from secureig.cli import main

main()
