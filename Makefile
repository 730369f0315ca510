# Thin front end over CMake. `make test` and `make demo` work on a fresh Debian 12
# machine: missing Debian packages are installed with apt-get when run as root (otherwise
# the exact apt-get line is printed and make stops).
BUILD ?= build
JOBS ?= 2
BENCH ?=
# Arguments for examples/fashion_mnist, e.g. `make demo DEMO_ARGS=--bf16` (bf16 autocast).
DEMO_ARGS ?=
DEPS := cmake g++ make pkg-config libdnnl-dev libeigen3-dev libfmt-dev catch2 nlohmann-json3-dev \
        zlib1g-dev libcli11-dev ocl-icd-opencl-dev dataset-fashion-mnist python3 python3-matplotlib \
        libopenmpi-dev openmpi-bin
BENCH_DEPS := python3-torch libopenblas0-pthread
# `make fuzz`: libFuzzer (clang 16's compiler-rt) with ASan + UBSan, in its own build folder.
FUZZ_BUILD ?= build-fuzz
FUZZ_SECONDS ?= 60
FUZZ_DEPS := clang-16 libclang-rt-16-dev libomp-16-dev llvm-16
FUZZ_FLAGS := -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g \
              -Wno-pass-failed

SANITIZE_BUILD ?= build-sanitize
# What the test suite runs: the tests, the `kern` tool (install test), fashion_mnist (its
# bad-input test). Examples and benchmarks are not built in the sanitizer tree.
SANITIZE_TARGETS ?= kern_tests kern_cli fashion_mnist
SANITIZE_SUPP := $(CURDIR)/.ci/sanitizers
# ASan/UBSan/LSan options for every process the suite starts (kern_tests, the consumer, ...);
# .ci/sanitizers/README says what each one is for. tests/sanitize checks that they work.
SANITIZE_ENV := ASAN_OPTIONS=detect_leaks=1:detect_stack_use_after_return=1:abort_on_error=0:strict_string_checks=1:check_initialization_order=1:suppressions=$(SANITIZE_SUPP)/asan.supp \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:suppressions=$(SANITIZE_SUPP)/ubsan.supp \
  LSAN_OPTIONS=suppressions=$(SANITIZE_SUPP)/lsan.supp:print_suppressions=0

.PHONY: all deps bench-deps fuzz-deps configure build test test-sanitize demo bench fuzz install clean

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

# The whole suite under AddressSanitizer + UndefinedBehaviorSanitizer (g++, -O1, -g1: line
# tables are all a report needs, and cost less to compile than -g) in its own build folder,
# except the tests labelled `perf` (timing only: under the sanitizers they would time ASan).
# Suppressions (each with its reason) are in .ci/sanitizers/, see .ci/sanitizers/README.
# Without MPI: the mpirun tests are not run under the sanitizers (OpenMPI's own leaks, see
# .ci/sanitizers/README), and the install tests install only what this tree builds.
test-sanitize: deps
	@cmake -S . -B $(SANITIZE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -g1" \
	  -DKERN_SANITIZE=ON -DKERN_BUILD_BENCH=OFF -DKERN_WITH_MPI=OFF >/dev/null
	@cmake --build $(SANITIZE_BUILD) -j$(JOBS) --target $(SANITIZE_TARGETS)
	@cd $(SANITIZE_BUILD) && $(SANITIZE_ENV) ctest --output-on-failure -j$(JOBS) --timeout 1800 -LE perf

demo: build
	@$(BUILD)/examples/fashion_mnist $(DEMO_ARGS)

bench: build bench-deps
	@/usr/bin/python3 bench/run_bench.py --kern-bench $(BUILD)/bench/kern_bench \
	  --out $(BUILD)/bench/results.jsonl $(if $(BENCH),--bench $(BENCH),)

fuzz-deps:
	@./.ci/install-deps $(FUZZ_DEPS)

# Runs every target of fuzz/ for FUZZ_SECONDS (default 60) from its seed corpus; fails if
# any finds a crash, a sanitizer report, a timeout or a broken invariant (fuzz/run.sh).
fuzz: deps fuzz-deps
	@cmake -S . -B $(FUZZ_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++-16 \
	  -DCMAKE_CXX_FLAGS="$(FUZZ_FLAGS)" -DKERN_FUZZ=ON -DKERN_BUILD_TESTS=OFF \
	  -DKERN_BUILD_EXAMPLES=OFF -DKERN_BUILD_BENCH=OFF >/dev/null
	@cmake --build $(FUZZ_BUILD) -j$(JOBS) --target kern_fuzz
	@fuzz/run.sh $(FUZZ_BUILD) $(FUZZ_SECONDS)

install: build
	@cmake --install $(BUILD) $(if $(PREFIX),--prefix $(PREFIX),)

clean:
	@rm -rf $(BUILD) $(FUZZ_BUILD) $(SANITIZE_BUILD)
