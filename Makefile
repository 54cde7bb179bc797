# berth — `make run` sets up a fresh machine and starts berthd; `make test` runs everything.
SHELL := /bin/bash
DEBS := runc crun containerd docker.io docker-registry busybox-static containernetworking-plugins iptables util-linux iproute2 sqlite3 zstd apache2-utils openssl prometheus
NODE_STAMP := node_modules/.install-stamp
TEST_CONCURRENCY ?= 2

.PHONY: all deps debs node-deps build gen typecheck lint test test-unit test-integration run bench clean install reliability

all: build

deps: debs node-deps

# Install the Debian packages that are missing (apt-get update only when something is).
debs:
	@missing=""; for p in $(DEBS); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	fi

node-deps: $(NODE_STAMP)

$(NODE_STAMP): package.json package-lock.json
	# the committed lockfile is the one a fresh install writes (every platform's optional
	# packages), so npm ci installs exactly it and a clean clone stays clean
	npm ci --no-fund --no-audit
	@touch $@

gen: node-deps
	npx buf generate

build: node-deps gen
	npx tsc -p tsconfig.json
	node dist/scripts/bundle.js

typecheck: gen
	npx tsc -p tsconfig.json --noEmit

lint: build
	node dist/scripts/check-layers.js src
	npx biome check .

run: deps build
	./bin/berthd.js

test-unit: build
	node --test --test-concurrency=$(TEST_CONCURRENCY) dist/test/unit/*.test.js

test-integration: deps build
	node --test --test-concurrency=1 dist/test/integration/*.test.js

test: deps build lint typecheck
	node --test --test-concurrency=1 dist/test/unit/*.test.js dist/test/integration/*.test.js $$(ls dist/test/reliability/*.test.js 2>/dev/null)

# Side-by-side with the real containerd; prints berthd/containerd ratios. Pulls run with the daemons'
# roots on disk and again on tmpfs (this disk's speed swings several-fold). Not part of `make test`.
bench: deps build
	node dist/bench/core.js
	node dist/bench/apply.js
	node dist/bench/pull.js 3
	node dist/bench/pull.js 3 --tmpfs
	node dist/bench/lifecycle.js
	node dist/bench/cri.js
	node dist/bench/stream.js
	node dist/bench/scale.js

# The reliability suite at full size (make test runs a sample of each group): one table of
# group, cases, failures. BERTH_RELIABILITY_SEED picks the seed.
reliability: deps build
	node dist/scripts/reliability.js

clean:
	rm -rf dist src/gen

# berth under $(DESTDIR)$(PREFIX), berthd/berth in /usr/local/bin, the systemd unit, a default
# /etc/berth/config.toml (an existing one is kept) and bash completions: docs/install.md.
PREFIX ?= /opt/berth
DESTDIR ?=
install: build
	PREFIX="$(PREFIX)" DESTDIR="$(DESTDIR)" scripts/install.sh
