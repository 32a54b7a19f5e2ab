"""Text-game environments for agent tasks: one small interface (`base.TextEnv`) and a TextWorld backend whose
games are generated offline (the default)."""
