# tensorgate's container images: one file, two targets, picked with --target.
#
#   cpu  ONNX Runtime on the CPU (the [cpu] extra) on a Debian image that has Python; no apt needed.
#          podman build --target cpu -t tensorgate:cpu .     (or: bash scripts/build_image.sh)
#   gpu  onnxruntime-gpu, nvidia-ml-py, cuda-python (the [gpu] extra) and TensorRT's CUDA 13 wheels,
#        on NVIDIA's CUDA 13 + cuDNN 9 runtime image. TensorRT's wheels come from NVIDIA's index.
#          docker build --target gpu -t tensorgate:gpu .     (gpu is the last stage: also a plain build)
#
# Targets are build stages rather than one stage switched by a build argument because the two differ in
# more than the base image: the GPU base has no Python (apt installs it), the uid 1000 of Ubuntu's
# image is taken, and the packages differ. BuildKit and buildah build only the stages a target needs;
# the CPU stages come first so that Docker's legacy builder, which builds every stage up to the
# target, builds nothing of the GPU image for --target cpu.
#
# Both images: user tensorgate (uid 1000), models read from /models, built engines and accepted FP16
# models cached in /cache (a volume: mount a persistent one to keep them across restarts), HTTP/REST
# on 8000, gRPC on 8001 and Prometheus /metrics on 8002, `tensorgate serve` as PID 1 (SIGTERM:
# drains, exits 0). Flags after the image name go to `tensorgate serve`. No HEALTHCHECK: Kubernetes
# probes the HTTP health endpoints (/v2/health/live, /v2/health/ready on 8000; deploy/kubernetes).
#   podman run -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repo:/models:ro" tensorgate:cpu
#   docker run --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v "$PWD/model_repo:/models:ro" tensorgate:gpu
#
# Each target builds a virtual environment in a build stage and copies only it into a fresh stage of
# the same base (the venv's interpreter is the base's), with no pip cache. Package index settings
# (PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, PIP_FIND_LINKS, PIP_TRUSTED_HOST, PIP_CERT, PIP_DEFAULT_TIMEOUT,
# PIP_CONFIG_FILE) may be given as build arguments: they exist only in the build stages, which are
# discarded. scripts/build_image.sh passes the host's and bind-mounts its pip configuration and CA
# bundle read-only under /mnt for the RUN steps, so that the build works behind a proxy or with a
# local index, and nothing of them (not even a mount point) ends up in the image.

# A Debian image with python3 and python3-venv; scripts/build_image.sh makes one with mmdebstrap.
ARG CPU_BASE_IMAGE=docker.io/library/python:3.12-slim-bookworm
ARG CUDA_IMAGE=docker.io/nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---- cpu ------------------------------------------------------------------------------------------
FROM ${CPU_BASE_IMAGE} AS cpu-build
# Kept by podman as the cache of the next build; scripts/build_image.sh removes older ones.
LABEL tensorgate.stage="cpu-build"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
ARG PIP_CONFIG_FILE
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tensorgate/bin:$PATH
RUN python3 -m venv /opt/tensorgate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
RUN pip install --no-cache-dir ".[cpu]"

FROM ${CPU_BASE_IMAGE} AS cpu
LABEL org.opencontainers.image.title="tensorgate" \
      org.opencontainers.image.description="KServe V2 / Triton gRPC inference server for ONNX models (CPU)" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin tensorgate \
    && mkdir -p /models /cache \
    && chown tensorgate:tensorgate /cache
COPY --from=cpu-build /opt/tensorgate /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_MODEL_REPOSITORY=/models \
    TENSORGATE_ENGINE_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
VOLUME ["/cache"]
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tensorgate", "serve"]

# ---- gpu ------------------------------------------------------------------------------------------
FROM ${CUDA_IMAGE} AS gpu-build
LABEL tensorgate.stage="gpu-build"
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_TRUSTED_HOST
ARG PIP_CERT
ARG PIP_DEFAULT_TIMEOUT
ARG PIP_CONFIG_FILE
# The index that serves tensorrt-cu13's libraries and bindings (the PyPI package only points there);
# behind a proxy, its mirror of that index, or empty when PIP_INDEX_URL already serves them.
ARG NVIDIA_INDEX_URL=https://pypi.nvidia.com
# Pinned: a TensorRT engine is valid only for the TensorRT version that built it (the engine cache's
# key names it), so a rebuilt image must not change it unnoticed. 10.16.1.11 is TensorRT 10's last
# release for CUDA 13 on PyPI (11.x exists as well).
ARG TENSORRT_VERSION=10.16.1.11
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/tensorgate/bin:$PATH
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/tensorgate
WORKDIR /src
COPY pyproject.toml README.md ./
COPY server ./server
# onnxruntime-gpu only (never the CPU onnxruntime beside it: one import name), and TensorRT.
RUN pip install --no-cache-dir ${NVIDIA_INDEX_URL:+--extra-index-url "$NVIDIA_INDEX_URL"} \
        ".[gpu]" "tensorrt-cu13==${TENSORRT_VERSION}"

FROM ${CUDA_IMAGE} AS gpu
LABEL org.opencontainers.image.title="tensorgate" \
      org.opencontainers.image.description="KServe V2 / Triton gRPC inference server for ONNX models (CUDA, TensorRT)" \
      org.opencontainers.image.licenses="Apache-2.0"
# Ubuntu's image has a user "ubuntu" with uid 1000: tensorgate takes its place.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && if id -u ubuntu >/dev/null 2>&1; then userdel --remove ubuntu; fi \
    && useradd --create-home --uid 1000 --user-group --shell /usr/sbin/nologin tensorgate \
    && mkdir -p /models /cache \
    && chown tensorgate:tensorgate /cache
COPY --from=gpu-build /opt/tensorgate /opt/tensorgate
ENV PATH=/opt/tensorgate/bin:$PATH \
    TENSORGATE_MODEL_REPOSITORY=/models \
    TENSORGATE_ENGINE_CACHE_DIR=/cache \
    PYTHONUNBUFFERED=1
VOLUME ["/cache"]
USER 1000
EXPOSE 8000 8001 8002
ENTRYPOINT ["tensorgate", "serve"]
