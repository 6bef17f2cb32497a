# tenantserve on a GPU node: vLLM 0.32.0's own image + tenantserve on top.
# Build: docker build -t tenantserve:0.1.0 .
# Run:   docker run --gpus all -p 8000:8000 -v /models:/models -v /srv/tenantserve:/etc/tenantserve \
#          -e TENANTSERVE_ADMIN_TOKEN="$(openssl rand -hex 32)" tenantserve:0.1.0
# The registry (/etc/tenantserve/adapters.yaml) names the base and adapter paths inside the container (e.g. /models/...).
# The engine listens on 0.0.0.0 (published ports must reach it), so the registry must keep security.auth on (the
# default when it has no `security:` section): tenant keys, and admin routes only for TENANTSERVE_ADMIN_TOKEN.
# `launch` refuses (exit 2) a registry with `security: {auth: false}` on 0.0.0.0, e.g. the loopback demo's
# configs/adapters.yaml; there is deliberately no override here (--insecure-no-auth-on-network exists for labs).
FROM vllm/vllm-openai:v0.32.0

WORKDIR /opt/tenantserve
COPY pyproject.toml README.md ./
COPY src ./src
# vllm==0.32.0 is already in the image: install tenantserve without touching it.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir click httpx openai prometheus-client pydantic pydantic-settings pyyaml rich safetensors uvicorn fastapi

ENV TENANTSERVE_REGISTRY=/etc/tenantserve/adapters.yaml
EXPOSE 8000 8001
# One container = one process: the engine. The sidecar runs as a second container of the same pod (deploy/kubernetes).
ENTRYPOINT ["tenantserve"]
CMD ["launch", "--host", "0.0.0.0", "--port", "8000"]
