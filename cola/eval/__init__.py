"""cola.eval."""
