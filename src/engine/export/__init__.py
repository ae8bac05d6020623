"""graftline.engine.export."""
