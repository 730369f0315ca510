# Thin front end over CMake. `make test` and `make demo` work on a fresh Debian 12
# machine: missing Debian packages are installed with apt-get when run as root (otherwise
# the exact apt-get line is printed and make stops).
BUILD ?= build
JOBS ?= 2
BENCH ?=
DEPS := cmake g++ make pkg-config libdnnl-dev libeigen3-dev libfmt-dev catch2 nlohmann-json3-dev \
        zlib1g-dev libcli11-dev ocl-icd-opencl-dev dataset-fashion-mnist python3 python3-matplotlib
BENCH_DEPS := python3-torch libopenblas0-pthread

.PHONY: all deps bench-deps configure build test demo bench install clean

all: build

deps:
	@./.ci/install-deps $(DEPS)

bench-deps:
	@./.ci/install-deps $(BENCH_DEPS)

configure: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=Release >/dev/null

build: configure
	@cmake --build $(BUILD) -j$(JOBS)

test: build
	@cd $(BUILD) && ctest --output-on-failure -j$(JOBS) --timeout 900

demo: build
	@$(BUILD)/examples/fashion_mnist

bench: build bench-deps
	@/usr/bin/python3 bench/run_bench.py --kern-bench $(BUILD)/bench/kern_bench \
	  --out $(BUILD)/bench/results.jsonl $(if $(BENCH),--bench $(BENCH),)

install: build
	@cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

clean:
	@rm -rf $(BUILD)
