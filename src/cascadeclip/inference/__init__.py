"""Inference: scores from the model (`predict`), the fast path that computes them faster (`fast_path`), and the
class-name embeddings the model is queried with (`text_embeddings`)."""
