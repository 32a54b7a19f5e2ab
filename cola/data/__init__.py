"""cola.data."""
