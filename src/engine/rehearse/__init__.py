"""graftline.engine.rehearse."""
