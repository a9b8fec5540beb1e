"""One module per job kind, each with its config model and its executor."""
