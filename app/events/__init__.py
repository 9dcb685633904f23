"""The write model: one module per stream, the store and the writer."""
