# neuromem: `make demo` runs the main job offline; `make test` runs the whole suite.
# Both create .venv and install what they need when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Upstream TRIBE v2 code (CC-BY-NC), installed beside the venv for the equivalence tests only.
UPSTREAM := .upstream
UPSTREAM_PKGS := cognitive-scoring neuraltrain==0.0.2 neuralset==0.0.2 x_transformers==1.27.20 \
	exca==0.5.25 einops torchmetrics lightning_utilities submitit orjson ujson mne lazy_loader decorator

.PHONY: test demo lint install clean bench-gpu system-packages

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed-demo: pyproject.toml | $(PY)
	$(PY) -m pip install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(PY)
	$(PY) -m pip install -e ".[dev,assess,game]"
	touch $@ $(VENV)/.installed-demo

$(UPSTREAM)/.installed: Makefile | $(PY)
	rm -rf $(UPSTREAM)
	$(PY) -m pip install -q --no-deps --target $(UPSTREAM) $(UPSTREAM_PKGS)
	touch $@

install: $(VENV)/.installed-dev

# Debian packages the browser and database tests drive (installed when missing; needs root, as CI).
system-packages:
	@missing=""; command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing >/dev/null; }; \
	fi

test: $(VENV)/.installed-dev $(UPSTREAM)/.installed system-packages
	RAY_AUTH_MODE=disabled $(PY) -m pytest tests

demo: $(VENV)/.installed-demo
	RAY_AUTH_MODE=disabled $(VENV)/bin/neuromem demo --out demo_out

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check neuromem pipelines benchmarks tests

# The GPU benchmark suite: builds .devwhl/ (what the GPU machine lacks) for the device tool, which
# then runs, from the project root: source .devwhl/setup.sh && bash benchmarks/gpu_suite.sh --out $$OUT
bench-gpu: $(VENV)/.installed-dev
	bash benchmarks/gpu_wheelhouse.sh
	@echo "on the GPU machine: source .devwhl/setup.sh && bash benchmarks/gpu_suite.sh --out \$$OUT"

clean:
	rm -rf $(VENV) $(UPSTREAM) demo_out
