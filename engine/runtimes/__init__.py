"""Runtimes behind one interface (base.Runtime), one file each: torch_eager, torch_compiled, cuda_graphs, and ONNX
Runtime's ort_cpu, ort_cuda, ort_trt (sharing ort_runtime); registry.py names them. ort_session.OrtSession is the
one ONNX Runtime session wrapper that ONNX eval, the sweeps and the portrait backend share."""
