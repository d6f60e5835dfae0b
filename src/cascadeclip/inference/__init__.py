"""Inference: scores from the model (`predict`), the runtime that computes them faster (`fast_path`, with the kernel
choice of each machine in `kernel_choice`), the class-name embeddings the model is queried with (`text_embeddings`),
and the model as an ONNX graph (`onnx_export`)."""
