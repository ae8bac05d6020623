"""graftline.console: the Textual cockpit and the command line."""
