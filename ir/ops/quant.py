"""placeholder, filled by its family author."""
