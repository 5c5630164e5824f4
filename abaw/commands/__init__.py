"""The training, search, prediction and report commands of `abaw` (registered in `abaw.cli`)."""
