# Two commands matter: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Debian packages the test suite drives for real.
APT_PACKAGES := python3-venv redis-server nginx prometheus chromium docker-compose
NEEDED_BINARIES := redis-server nginx prometheus promtool chromium docker-compose
# The exporters the deployment runs, scraped by the real-Prometheus test (tests/integration).
APT_PACKAGES += prometheus-redis-exporter prometheus-nginx-exporter prometheus-node-exporter
NEEDED_BINARIES += prometheus-redis-exporter prometheus-nginx-exporter prometheus-node-exporter
# nginx.conf's TLS server, as shipped, names Debian's placeholder certificate (ssl-cert's
# snakeoil): `nginx -t` on the file needs it. Test nginx instances get their own (openssl).
APT_PACKAGES += ssl-cert
NEEDED_BINARIES += make-ssl-cert
SNAKEOIL := /etc/ssl/certs/ssl-cert-snakeoil.pem
# The deployment test (tests/e2e/test_deploy.py) boots Debian hosts with debootstrap and
# systemd-nspawn, serves them packages through apt-cacher-ng and reaches them with ssh.
APT_PACKAGES += debootstrap systemd-container apt-cacher-ng openssh-client openssl
NEEDED_BINARIES += debootstrap systemd-nspawn apt-cacher-ng ssh openssl

.PHONY: run test test-fast lint typecheck pytest system-deps bench clean terraform-test image \
	dashboards dashboard-picture screenshots

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
	  { echo "webchat needs Python 3.11 or newer; $(PYTHON) is $$($(PYTHON) --version)"; exit 1; }
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); \
	  else echo "python3 -m venv failed; run: sudo apt-get install -y python3-venv"; exit 1; fi; }
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

run: $(BIN)/.installed
	$(BIN)/webchat

system-deps:
	@missing=""; for b in $(NEEDED_BINARIES); do \
	  command -v $$b >/dev/null 2>&1 || [ -x /usr/sbin/$$b ] || missing="$$missing $$b"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing system packages for:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing:$$missing. Run: sudo apt-get install -y $(APT_PACKAGES)"; exit 1; \
	  fi; \
	fi
	@if [ ! -f $(SNAKEOIL) ]; then \
	  if [ "$$(id -u)" = 0 ]; then make-ssl-cert generate-default-snakeoil; \
	  else echo "missing $(SNAKEOIL). Run: sudo make-ssl-cert generate-default-snakeoil"; exit 1; fi; \
	fi

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/.installed
	$(BIN)/mypy

pytest: $(BIN)/.installed system-deps
	$(BIN)/pytest

test: lint typecheck pytest

# The unit tests and the deployment's fast tier (compose config, HCL, inventory, lint, nginx -t);
# the full deployment tier (tests/deploy/full/, real hosts) runs only in `make test`.
test-fast: $(BIN)/.installed system-deps
	$(BIN)/pytest tests/unit tests/deploy --ignore=tests/deploy/full

# Not in `make test`: needs a terraform binary and the hashicorp/aws provider (a registry or a
# local mirror); `terraform test` plans and applies infra/ against a mocked provider.
terraform-test:
	cd infra && terraform init -input=false -backend=false && terraform validate && terraform test

# Not in `make test`: builds the image with podman from a locally made Debian base (no registry
# needed) and checks it; see deploy/compose/build-image.sh.
image:
	bash deploy/compose/build-image.sh

# Grafana dashboards are generated from code and committed (monitoring/grafana/dashboards.py).
dashboards: $(BIN)/.installed
	$(BIN)/python monitoring/grafana/dashboards.py

# docs/dashboard.png: four minutes of scripted chat on a local deployment, drawn from Prometheus.
dashboard-picture: $(BIN)/.installed system-deps
	$(BIN)/python monitoring/snapshot.py

# The README's pictures: docs/screenshot.png (laptop) and docs/screenshot-phone.png, taken by
# the accessibility test's scene in headless Chromium. Tests never write them otherwise.
screenshots: $(BIN)/.installed system-deps
	WEBCHAT_SCREENSHOTS=1 $(BIN)/pytest tests/e2e/test_accessibility.py -q

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
