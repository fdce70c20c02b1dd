"""The robustcheck command line: the main parser and commands, and the verify command."""
