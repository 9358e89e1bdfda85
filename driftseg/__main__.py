"""`python -m driftseg`, the same as the `driftseg` command."""
from driftseg.cli import main

main()
