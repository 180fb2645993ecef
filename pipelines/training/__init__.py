"""Training and evaluation: models (torch), batches from model-ready arrays, full-ranking metrics."""
