"""The template tag library ``pixelmirror``."""
