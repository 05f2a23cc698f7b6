# GPU image: CUDA runtime + the project with its GPU extras. `docker run --gpus all IMAGE train --config ...`
FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-pip python3-venv python3-dev build-essential git \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /opt/gflowvlm
COPY pyproject.toml README.md ./
COPY gflowvlm ./gflowvlm
COPY envs ./envs
COPY configs ./configs
COPY scripts ./scripts
# torch from the CUDA 12.4 index first, so the project's torch range is already met by a CUDA build.
RUN pip install "torch==2.5.1" --index-url https://download.pytorch.org/whl/cu124 \
    && pip install "/opt/gflowvlm[gpu,alfworld]"

ENTRYPOINT ["gflowvlm"]
CMD ["--help"]
