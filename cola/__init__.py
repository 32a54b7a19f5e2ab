"""CoLA: Controlling Large Language Models with Latent Actions."""
__version__ = "0.1.0"
