"""graftline.engine.pipeline."""
