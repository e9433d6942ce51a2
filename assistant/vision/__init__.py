"""Base layer, vision: the open_clip backbone, item features, the faiss index and the attribute heads."""
