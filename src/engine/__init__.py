"""graftline.engine: headless training engine. Never imports Textual."""
