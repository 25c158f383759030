# Stratum build, test and benchmark entry points.
#
#   make run    start the node agent on embedded defaults (data dir ./data,
#               127.0.0.1:7443, mTLS with development certificates made on
#               first start); drive it with build/bin/nodectl. More agent
#               options: make run AGENT_ARGS='--insecure-registry 127.0.0.1:5000'
#   make run-vm boot the guest VM with our vmm inside the nested test host
#   make run-node  the node image through the agent in the nested test host
#   make test   every test: the lints (make lint), unit, CLI error paths, real
#               boots in the nested host
#   make test-cluster  the etcd cluster of node VMs in the nested host
#   make bench  boot time, memory, disk I/O and vsock latency of vmm beside QEMU microvm;
#               the node image's boot to multi-user and to ready beside QEMU microvm;
#               VM-to-VM TCP over a network and a three-member etcd cluster of
#               node VMs beside QEMU microvm guests on a bridge;
#               the agent's API under load; pod start beside containerd + crun;
#               critest's CRI lifecycle benchmarks (critest -benchmark) beside
#               containerd 1.6 + runc (skipped when CRITEST is missing; output
#               in CRI_BENCH_OUT, default build/cri-bench)
#   make conformance  the upstream CRI validation suite (critest v1.26.1) against
#               the agent's CRI socket and against containerd 1.6 + runc on the
#               same locally built images, side by side (not part of `make test`;
#               CRITEST=PATH, CONFORMANCE_OUT=DIR, CONFORMANCE_ARGS='--side stratum
#               --focus REGEX --agent-arg=--pod-security=privileged')
#
# A fresh Debian 12 machine needs nothing but this Makefile: missing Debian
# packages are installed, the guest kernel is built and the nested host's
# kernel fetched. Slow outputs are cached under /var/cache/stratum, keyed by
# their inputs, and exposed as symlinks in build/images.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
CARGO ?= cargo
STATIC_TARGET := x86_64-unknown-linux-gnu
STATIC_DIR := target/static
STATIC_BIN := $(STATIC_DIR)/$(STATIC_TARGET)/release
# Binaries that run inside the nested host are linked statically: its
# initramfs has busybox and nothing else.
STATIC_CARGO := RUSTFLAGS='-C target-feature=+crt-static' $(CARGO) build --release \
	--target $(STATIC_TARGET) --target-dir $(STATIC_DIR)

# protobuf-compiler: the k8s-cri crate's build script runs protoc on the
# CRI's proto files.
DEB_PACKAGES := qemu-system-x86 busybox-static cpio linux-source-6.1 \
	build-essential flex bison bc libelf-dev libssl-dev xz-utils kmod \
	docker-registry skopeo umoci nftables crun runc mtools dosfstools mmdebstrap etcd-client \
	protobuf-compiler

.PHONY: all deps bench-pod-deps images node-image run-node static build run run-vm test test-cluster bench conformance fuzz fuzz-test fmt lint clean

all: build

deps:
	@guest-images/install-debs.sh $(DEB_PACKAGES)

# containerd is the peer of bench-pod only: installed for `make bench`, not
# for everything else (its Debian package would start a system daemon where
# systemd runs; bench-pod starts a private instance of its own).
bench-pod-deps: deps
	@guest-images/install-debs.sh containerd

images: deps
	guest-images/build-all.sh

# The node image (guest-images/node-image.sh): Debian 12 with cloud-init and
# the guest agent, on Debian's stock cloud kernel. Needs the static agent.
node-image: deps static
	guest-images/node-image.sh $(STATIC_BIN)/stratum-guest $(STATIC_BIN)/stratum-vm-image

static: deps
	$(STATIC_CARGO) -p vmm --bin vmm -p stratum-jail --bin stratum-jailer
	$(STATIC_CARGO) -p stratum-guest --bin stratum-guest -p stratum-image --bin stratum-vm-image
	$(STATIC_CARGO) -p stratum-tests --bin boot-probe --bin snapshot-probe --bin api-call --bin mktap --bin vsock-host \
		--bin guest-probe
	$(STATIC_CARGO) -p node-agent --bin node-agent -p nodectl --bin nodectl \
		-p stratum-runtime --bin stratum-log-writer --bin stratum-pod-init

build: deps
	$(CARGO) build --workspace

# The release binaries `make test` builds (static, for the nested host) are
# the ones `make run` starts, so a run after a test builds nothing again.
# VM kernels and initrds may come only from artifact directories: here the
# built guest images (build/images and the cache it links into).
AGENT_ARGS ?=
STRATUM_CACHE ?= /var/cache/stratum
run: images static
	mkdir -p build/bin
	for b in node-agent nodectl vmm stratum-jailer stratum-log-writer stratum-pod-init stratum-vm-image; do ln -sfn ../../$(STATIC_BIN)/$$b build/bin/$$b; done
	build/bin/node-agent --data-dir data --vmm build/bin/vmm \
		--artifact-dir build/images --artifact-dir $(STRATUM_CACHE)/guest-kernel \
		--artifact-dir $(STRATUM_CACHE)/guest-initramfs $(AGENT_ARGS)

run-vm: images static
	$(CARGO) run -q -p stratum-tests --bin nested-host -- --script guest-images/run-guest.sh --echo

# The node image through the agent, in the nested test host: imported as a
# VM image, a worker VM from it with user-data, ready, shut down.
run-node: images static node-image
	$(CARGO) run -q -p stratum-tests --bin nested-host -- --script guest-images/run-node.sh \
		--node-image --memory 5120 --cpus 1 --timeout 900 \
		--file /stratum/bin/node-agent=$(STATIC_BIN)/node-agent --file /stratum/bin/nodectl=$(STATIC_BIN)/nodectl \
		--file /stratum/bin/stratum-jailer=$(STATIC_BIN)/stratum-jailer --file /stratum/bin/mktap=$(STATIC_BIN)/mktap

# Tests drive the workspace's binaries (an agent test runs nodectl), and
# cargo builds a package's binaries for tests only when that package has
# integration tests of its own: every binary is built first.
test: deps images static node-image
	$(MAKE) lint
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast
	$(MAKE) fuzz-test

# The three-member etcd cluster of node VMs (tests/tests/etcd_cluster.rs)
# alone, its console shown: part of `make test`, and its longest test.
test-cluster: deps images static node-image
	$(CARGO) build --workspace --bins
	$(CARGO) test -p stratum-tests --test etcd_cluster -- --nocapture

bench: images static node-image bench-pod-deps
	$(CARGO) run -q --release -p stratum-tests --bin bench-boot
	$(CARGO) run -q --release -p stratum-tests --bin bench-snapshot
	$(CARGO) run -q --release -p stratum-tests --bin bench-node
	$(CARGO) run -q --release -p stratum-tests --bin bench-io
	$(CARGO) run -q --release -p stratum-tests --bin bench-vsock
	$(CARGO) run -q --release -p stratum-tests --bin bench-net
	$(CARGO) run -q --release -p stratum-tests --bin bench-cluster
	$(CARGO) build -q --release -p node-agent --bin node-agent && $(CARGO) run -q --release -p stratum-testkit --bin bench-agent
	$(CARGO) build -q --release -p node-agent --bin node-agent -p nodectl --bin nodectl -p stratum-runtime --bin stratum-log-writer --bin stratum-pod-init \
		&& $(CARGO) run -q --release -p stratum-testkit --bin bench-pod
	@if test -f '$(CRITEST)'; then \
		guest-images/install-debs.sh containernetworking-plugins iptables \
		&& images=$$(guest-images/conformance-images.sh | tail -n1) \
		&& $(CARGO) build -q --release -p node-agent --bin node-agent -p nodectl --bin nodectl -p stratum-runtime --bin stratum-log-writer --bin stratum-pod-init \
		&& $(CARGO) run -q --release -p stratum-testkit --bin conformance -- --benchmark --critest '$(CRITEST)' \
			--images "$$images" --out '$(CRI_BENCH_OUT)' $(CRI_BENCH_ARGS); \
	else \
		echo "bench: critest not found at $(CRITEST): skipping the CRI lifecycle benchmark (cri-tools v1.26.1, ../shared/tools/cri-tools-v1.26.1/README.md; set CRITEST=PATH)" >&2; \
	fi

# critest (cri-tools v1.26.1, ../shared/tools) against a private agent and a
# private containerd (crates/testkit/src/bin/conformance.rs), the images it
# pulls built by guest-images/conformance-images.sh (cached) and served by a
# throwaway registry behind registry mirrors. Reports, critest's output and
# the summary go to CONFORMANCE_OUT.
CRITEST ?= ../shared/tools/cri-tools-v1.26.1/critest
CONFORMANCE_ARGS ?=
CONFORMANCE_OUT ?= build/conformance
# critest -benchmark through the same runner (`make bench`'s last step).
CRI_BENCH_OUT ?= build/cri-bench
CRI_BENCH_ARGS ?=
conformance:
	@test -f '$(CRITEST)' || { echo "conformance: critest not found at $(CRITEST): it is cri-tools v1.26.1's (../shared/tools/cri-tools-v1.26.1/README.md); set CRITEST=PATH" >&2; exit 1; }
	@$(MAKE) --no-print-directory bench-pod-deps
	@guest-images/install-debs.sh containernetworking-plugins iptables
	images=$$(guest-images/conformance-images.sh | tail -n1) \
		&& $(CARGO) build -q -p node-agent --bin node-agent -p nodectl --bin nodectl -p stratum-runtime --bin stratum-log-writer --bin stratum-pod-init \
		&& $(CARGO) run -q -p stratum-testkit --bin conformance -- --critest '$(CRITEST)' --images "$$images" \
			--out '$(CONFORMANCE_OUT)' $(CONFORMANCE_ARGS)

# The cargo-fuzz targets (vmm/fuzz) over seeded random inputs, on stable.
fuzz-test:
	$(CARGO) test --release --manifest-path vmm/fuzz/Cargo.toml

# libFuzzer for FUZZ_SECONDS per target (no sanitizer: stable Rust).
FUZZ_SECONDS ?= 30
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked
	cd vmm/fuzz && for t in $$($(CARGO) fuzz list); do \
		echo "fuzz: $$t for $(FUZZ_SECONDS)s"; \
		$(CARGO) fuzz run --sanitizer none $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf build
