"""`python -m bench.campaign`: see the package's docstring, or `--help`."""

from bench.campaign.main import main

main()
