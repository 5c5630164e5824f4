"""Training, strategy search, prediction and reports."""
