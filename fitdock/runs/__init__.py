"""Run records on disk, the in-script run context and the run status enum."""
