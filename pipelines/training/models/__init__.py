"""One module per model; ``base`` holds the shared interface."""
