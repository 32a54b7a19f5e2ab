"""cola.base."""
