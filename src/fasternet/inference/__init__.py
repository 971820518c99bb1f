"""Running trained models fast: deploy mode, export, runners, INT8, profiling and benchmarks.

Modules: ``deployed`` (BN folding, PConv forms, any model), ``exporters`` (ONNX, OpenVINO, pt2
and the edge formats, verified), ``edge`` (ExecuTorch, LiteRT, NCNN, Core ML), ``runners`` (one
callable per engine and precision), ``calibration`` and ``quantization`` (INT8), ``profiler``
(params, MACs, memory access), ``bench`` (interleaved timing, GEMM peak, presets), ``timing``,
``prediction`` and ``kernels`` (the fused Triton block). The public functions are re-exported by
:mod:`fasternet` (``fasternet.deploy``, ``fasternet.export``, ``fasternet.runner``, ...).
"""
