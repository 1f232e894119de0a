"""geopush."""
