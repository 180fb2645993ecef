"""Semantic IDs: item text, cached embeddings, quantizers (residual / balanced hierarchical / product),
stable assignment across refreshes, quality metrics and exports."""
