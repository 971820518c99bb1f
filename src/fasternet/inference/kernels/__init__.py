"""Custom kernels: the fused FasterNet block (Triton on CUDA, a torch reference elsewhere)."""
