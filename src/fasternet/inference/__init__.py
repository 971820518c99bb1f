"""Running trained models fast: deploy mode, export, runners, INT8, profiling and benchmarks.

Modules: ``deployed`` (BN folding, PConv forms), ``exporters`` (ONNX, OpenVINO, pt2, verified),
``runners`` (one callable per engine and precision), ``quantization`` (INT8), ``profiler``
(params, MACs, memory access), ``bench`` (interleaved timing, GEMM peak, presets), ``timing``,
``predict`` and ``kernels`` (the fused Triton block). The public functions are re-exported by
:mod:`fasternet` (``fasternet.deploy``, ``fasternet.export``, ``fasternet.runner``, ...).
"""
