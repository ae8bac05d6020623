"""graftline.engine.run."""
