"""`python -m cola.cli`: the `cola` command line."""

from cola.cli import main

main()
