"""The HTTP edge: the only code that knows OpenAI's field names and wire shapes."""
