# The GPU image: tensorgate with ONNX Runtime CUDA (the [gpu] extra) and TensorRT, on CUDA 13 and
# cuDNN 9 (what onnxruntime-gpu >= 1.27 and the default `tensorrt` wheels are built for).
#   docker build -t tensorgate:gpu .
#   docker run --gpus all -p 8001:8001 -p 8002:8002 -v $PWD/model_repo:/models tensorgate:gpu
# Engines and accepted FP16 models are cached in /cache: mount a volume there to keep them.
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04

FROM ${CUDA_IMAGE} AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
# onnxruntime-gpu only (never the CPU onnxruntime beside it), and TensorRT's CUDA 13 wheels.
RUN pip install --no-cache-dir ".[gpu]" "tensorrt>=10.13"

FROM ${CUDA_IMAGE}
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 tensorgate \
    && mkdir -p /models /cache \
    && chown tensorgate /cache
COPY --from=build /opt/tensorgate /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_MODEL_REPOSITORY=/models \
    TENSORGATE_ENGINE_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
USER 1000
EXPOSE 8001 8002
ENTRYPOINT ["tensorgate", "serve"]
