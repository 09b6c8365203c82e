"""What the command line shows a person: one-line errors, live progress, tables."""
