"""The robustcheck command line: the main parser and commands, and the verify command."""

from robustcheck.threads import prefer_passive_waiting

# Where the command line starts (the `robustcheck` script and `python -m robustcheck.cli.main` import this
# package first): idle OpenMP threads should sleep, not spin, and OpenMP reads that only when torch loads it.
prefer_passive_waiting()
