"""tensorgate: an inference server for ONNX models speaking the KServe V2 / Triton gRPC protocol."""

__version__ = "0.1.0"
