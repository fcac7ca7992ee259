# An `ftlab worker`: joins the shared Optuna study and runs trials on one GPU until the study's budget is met.
# Built from the repository root by `docker compose build worker` (context: .).
#
# The base image brings CUDA and a CUDA build of torch; ftlab is installed around it, never replacing it (the
# constraint below makes pip fail loudly instead of swapping in another torch). A newer base, e.g.
#   docker compose build --build-arg BASE_IMAGE=pytorch/pytorch:2.7.0-cuda12.8-cudnn9-runtime worker
# is needed for GPUs the base's CUDA does not support.
ARG BASE_IMAGE=pytorch/pytorch:2.4.0-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface TOKENIZERS_PARALLELISM=false
WORKDIR /ftlab

# Only what the package needs: the build context's .venv, mlruns and .git never reach the image.
COPY pyproject.toml README.md ./
COPY ftlab ./ftlab
COPY sweeps ./sweeps
RUN python -c "import torch; print(f'torch=={torch.__version__}')" > /tmp/keep-torch.txt \
    && pip install --constraint /tmp/keep-torch.txt -e '.[grpc]' \
    && ftlab --help > /dev/null

CMD ["ftlab", "--help"]
