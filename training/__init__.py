"""Training of the stamp classifier models (datasets, simulator, models, export)."""
