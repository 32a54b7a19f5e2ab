"""cola.rl."""
