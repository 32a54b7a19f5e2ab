"""cola.train."""
