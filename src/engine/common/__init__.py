"""graftline.engine.common."""
