# Build for the sparsely-gated Mixture-of-Experts trainer.
#
#   make            build everything into build/
#   make run        install missing Debian packages, build, train the default
#                   model on the bundled WikiText-2, print validation perplexity
#   make test       install missing packages, build, run every test in the
#                   normal build and again under AddressSanitizer + UBSan
#   make bench      run the benchmarks in benchmarks/
#   make bench-mt   translation quality, MoE against dense (BENCH_MT_SECONDS)
#   make bench-hmoe hierarchical MoE against flat: speed, memory, gate cost,
#                   WikiText-2 quality (benchmarks/bench_hmoe.sh; sizes from
#                   the environment)
#   make SANITIZE=address,undefined ...   build into build/san instead
#
# Objects go in $(BUILD) with -MMD -MP dependency files; protoc-c output is
# generated into $(BUILD)/proto and never edited by hand.

SANITIZE ?=
ifeq ($(SANITIZE),)
BUILD ?= build
SAN_FLAGS :=
else
BUILD ?= build/san
SAN_FLAGS := -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
endif

PKGS      = libzmq libprotobuf-c libuv openblas inih jansson
TEST_PKGS = check

CC    ?= cc
STD    = -std=c11 -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE
# snprintf truncation into fixed buffers is deliberate (error texts, names).
WARN   = -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wno-format-truncation
ifeq ($(CI),true)
WARN  += -Werror
endif
# -ffp-contract=off: no fused multiply-add unless written, so that every
# build of the same code on the same machine rounds the same way (DESIGN §4).
# -fno-trapping-math lets branch-free selects vectorise; we never use FP traps.
# -fno-math-errno lets sqrtf vectorise (errno is never read; results are the
# same correctly rounded values).
OPT   ?= -O3 -march=native -ffp-contract=off -fno-trapping-math -fno-math-errno
DEBUG ?= -g

PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS))
# Debian's libhttp-parser-dev (nodejs/http-parser 2.9) ships no pkg-config
# file, so its library is named directly (its header is in /usr/include).
PKG_LIBS   = $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lm -lpthread
TEST_CFLAGS = $(shell pkg-config --cflags $(TEST_PKGS))
TEST_LIBS   = $(shell pkg-config --libs $(TEST_PKGS))

# ---------------------------------------------------------------------------
# The parts of the tree (docs/ARCHITECTURE.md). common/ is what every process
# shares and knows no process; each program's part sees common/ and itself
# only: its own include path and its own library, and a program links
# common/ and its part. `make check-layers` (run by `make test`) fails on an
# include that crosses a part. One use is declared: moectl runs trained
# models (eval, generate) with the worker's model code, so it sees and
# links worker/ too (PART:USES below).
#
#   part            folder               library              program
#   common          common/ (+ proto)    libmoe_common.a      -
#   worker          worker/              libmoe_worker.a      moe-worker
#   expert          server/expert/       libmoe_expert.a      moe-server
#   coordinator     server/coordinator/  libmoe_coordinator.a moe-coordinator
#   moectl          server/moectl/       libmoe_moectl.a      moectl (+ worker)
PARTS_DIRS = common worker server/expert server/coordinator server/moectl:worker

INC_COMMON = -Icommon -I$(BUILD)/proto
INCLUDES = $(INC_COMMON)
$(BUILD)/obj/worker/%.o: INCLUDES = $(INC_COMMON) -Iworker
$(BUILD)/obj/server/expert/%.o: INCLUDES = $(INC_COMMON) -Iserver/expert
$(BUILD)/obj/server/coordinator/%.o: INCLUDES = $(INC_COMMON) -Iserver/coordinator
$(BUILD)/obj/server/moectl/%.o: INCLUDES = $(INC_COMMON) -Iserver/moectl -Iworker
# Tests and benchmarks look inside every part.
INC_ALL = $(INC_COMMON) -Iworker -Iserver/expert -Iserver/coordinator -Iserver/moectl
$(BUILD)/obj/tests/%.o: INCLUDES = $(INC_ALL)
$(BUILD)/obj/benchmarks/%.o: INCLUDES = $(INC_ALL)

ALL_CFLAGS = $(STD) $(WARN) $(OPT) $(DEBUG) $(SAN_FLAGS) $(INCLUDES) $(PKG_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(SAN_FLAGS) $(LDFLAGS)

# ---------------------------------------------------------------------------
# Sources

PROTO_C   = $(BUILD)/proto/moe.pb-c.c
PROTO_H   = $(BUILD)/proto/moe.pb-c.h
obj_of    = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

COMMON_OBJ = $(call obj_of,$(wildcard common/*.c)) $(BUILD)/obj/proto/moe.pb-c.o
WORKER_OBJ = $(call obj_of,$(filter-out worker/trainer_main.c,$(wildcard worker/*.c)))
EXPERT_OBJ = $(call obj_of,$(filter-out server/expert/expert_server_main.c,$(wildcard server/expert/*.c)))
COORD_OBJ  = $(call obj_of,$(filter-out server/coordinator/coord_main.c,$(wildcard server/coordinator/*.c)))
CTL_OBJ    = $(call obj_of,$(filter-out server/moectl/moectl.c,$(wildcard server/moectl/*.c)))

LIB_COMMON = $(BUILD)/libmoe_common.a
LIB_WORKER = $(BUILD)/libmoe_worker.a
LIB_EXPERT = $(BUILD)/libmoe_expert.a
LIB_COORD  = $(BUILD)/libmoe_coordinator.a
LIB_CTL    = $(BUILD)/libmoe_moectl.a

BIN_WORKER = $(BUILD)/bin/moe-worker
BIN_SERVER = $(BUILD)/bin/moe-server
BIN_COORD  = $(BUILD)/bin/moe-coordinator
BIN_CTL    = $(BUILD)/bin/moectl
# The dashboard page, compiled in as coord_dashboard_html[] / coord_dashboard_html_len.
DASH_C = $(BUILD)/gen/coord_dashboard_html.c
DASH_O = $(BUILD)/obj/gen/coord_dashboard_html.o
# The PyTorch module of export bundles, compiled into moectl.
TORCH_C = $(BUILD)/gen/moectl_torch_model_py.c
TORCH_O = $(BUILD)/obj/gen/moectl_torch_model_py.o

TEST_SRC  = $(wildcard tests/unit/test_*.c tests/grad/test_*.c)
TEST_OBJ  = $(TEST_SRC:%.c=$(BUILD)/obj/%.o) $(BUILD)/obj/tests/test_main.o \
            $(BUILD)/obj/tests/test_util.o $(BUILD)/obj/tests/test_registry.o
TEST_BIN  = $(BUILD)/bin/moe-tests

BENCH_SRC = $(wildcard benchmarks/bench_*.c)
BENCH_COMMON = $(BUILD)/obj/benchmarks/gemm_rate.o
BENCH_BIN = $(BENCH_SRC:benchmarks/%.c=$(BUILD)/bin/%)

.PHONY: all deps deps-test deps-bench run test test-long test-chaos test-normal test-san test-unit \
        test-integration test-integration-long bench bench-mt bench-hmoe clean check-layers check-functions \
        layout check-layout check-prometheus check-deploy test-containers
.DEFAULT_GOAL := all

BIN_PROBE = $(BUILD)/bin/moe-wire-probe
BIN_ATTACK = $(BUILD)/bin/moe-attack

all: $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL) $(TEST_BIN) $(BENCH_BIN) $(BIN_PROBE) \
     $(BIN_ATTACK)

# Every object also waits for the generated protobuf header.
$(BUILD)/obj/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c $< -o $@

# moe_build_info{version=...} in /metrics: the tree's `git describe`.
MOE_VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo unknown)
$(BUILD)/obj/server/coordinator/coord_render.o: ALL_CFLAGS += -DMOE_VERSION='"$(MOE_VERSION)"'

$(BUILD)/obj/proto/moe.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -Wno-missing-prototypes -MMD -MP -c $< -o $@

$(PROTO_C) $(PROTO_H): proto/moe.proto
	@mkdir -p $(BUILD)/proto
	protoc-c --proto_path=proto --c_out=$(BUILD)/proto $<

define library
$(1): $(2)
	@rm -f $$@
	ar rcs $$@ $$^
endef
$(eval $(call library,$(LIB_COMMON),$(COMMON_OBJ)))
$(eval $(call library,$(LIB_WORKER),$(WORKER_OBJ)))
$(eval $(call library,$(LIB_EXPERT),$(EXPERT_OBJ)))
$(eval $(call library,$(LIB_COORD),$(COORD_OBJ) $(DASH_O)))
$(eval $(call library,$(LIB_CTL),$(CTL_OBJ) $(TORCH_O)))

$(BIN_WORKER): $(BUILD)/obj/worker/trainer_main.o $(LIB_WORKER) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BIN_SERVER): $(BUILD)/obj/server/expert/expert_server_main.o $(LIB_EXPERT) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(DASH_C): server/coordinator/coord_dashboard.html deploy/embed_file.sh
	@mkdir -p $(dir $@)
	sh deploy/embed_file.sh $< $@ coord_dashboard_html

$(TORCH_C): deploy/torch_model.py deploy/embed_file.sh
	@mkdir -p $(dir $@)
	sh deploy/embed_file.sh $< $@ moectl_torch_model_py

$(TORCH_O): $(TORCH_C)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(DASH_O): $(DASH_C)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(BIN_COORD): $(BUILD)/obj/server/coordinator/coord_main.o $(LIB_COORD) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BIN_CTL): $(BUILD)/obj/server/moectl/moectl.o $(LIB_CTL) $(LIB_WORKER) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BIN_PROBE): $(BUILD)/obj/tests/tools/wire_probe.o $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BIN_ATTACK): $(BUILD)/obj/tests/tools/attack.o $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

# The test registry is generated from the file names: tests/*/test_foo.c
# defines `Suite *test_foo_suite(void)`.
$(BUILD)/tests/test_registry.c: $(TEST_SRC) Makefile
	@mkdir -p $(dir $@)
	@{ echo '/* Generated by the Makefile from the test file names. */'; \
	   echo '#include <check.h>'; \
	   for f in $(notdir $(basename $(TEST_SRC))); do echo "Suite *$${f}_suite(void);"; done; \
	   echo 'Suite *(*const test_registry[])(void) = {'; \
	   for f in $(notdir $(basename $(TEST_SRC))); do echo "    $${f}_suite,"; done; \
	   echo '    0};'; } > $@

$(BUILD)/obj/tests/test_registry.o: $(BUILD)/tests/test_registry.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) -Wno-missing-prototypes -c $< -o $@

$(BUILD)/obj/tests/%.o: tests/%.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) $(TEST_CFLAGS) -Itests -MMD -MP -c $< -o $@

$(TEST_BIN): $(TEST_OBJ) $(LIB_CTL) $(LIB_WORKER) $(LIB_EXPERT) $(LIB_COORD) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(TEST_LIBS) $(PKG_LIBS)

$(BUILD)/bin/bench_%: $(BUILD)/obj/benchmarks/bench_%.o $(BENCH_COMMON) $(LIB_WORKER) $(LIB_COMMON)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# The layering rule, checked on the sources (every #include "..." of each
# part must be of common/, generated protobuf, or the part itself).
check-layers:
	@sh tests/tools/test_check_layers.sh $(PARTS_DIRS)
	@sh tests/tools/check_layers.sh $(PARTS_DIRS)

# The README's layout section is generated from the tree: `make layout`
# rewrites it, `make check-layout` (run by `make test`) fails when it is stale.
layout:
	@python3 tests/tools/layout.py --write README.md
check-layout:
	@python3 tests/tools/layout.py --check README.md
	@python3 tests/tools/check_architecture.py docs/ARCHITECTURE.md

# The alert rules of deploy/prometheus: valid, and each alert's unit tests
# (firing and not) pass; the example configuration is valid.
check-prometheus:
	@promtool check rules deploy/prometheus/alerts.yml
	@cd deploy/prometheus && promtool test rules alerts_test.yml
	@promtool check config deploy/prometheus/prometheus.yml >/dev/null

# deploy/kubernetes, deploy/systemd, the compose file and the swarm stack:
# well-formed and consistent with each other (tests/tools/check_deploy.py);
# the units also through systemd-analyze verify where it runs.
check-deploy:
	@python3 tests/tools/check_deploy.py

# No production function longer than FUNC_MAX lines (the longest are listed).
FUNC_MAX ?= 120
check-functions:
	@python3 tests/tools/long_functions.py --max $(FUNC_MAX) common worker server

# ---------------------------------------------------------------------------
# The two commands of the README, plus the pieces they are made of.

deps:
	@sh deploy/install-deps.sh

deps-test:
	@sh deploy/install-deps.sh --test

# make run: a local cluster of RUN_SERVERS expert servers and RUN_WORKERS
# workers on 127.0.0.1 (deploy/launch-local.sh), default model and corpus.
# RUN_OPTS are added to every process's options (make test runs this target
# with a few steps: RUN_OPTS="--steps 20 ...").
RUN_DIR ?= run
RUN_SERVERS ?= 2
RUN_WORKERS ?= 1
RUN_OPTS ?=
run: deps
	@$(MAKE) --no-print-directory $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL)
	@mkdir -p $(RUN_DIR)
	sh deploy/launch-local.sh --bin $(BUILD)/bin --run-dir $(RUN_DIR) --servers $(RUN_SERVERS) \
	    --workers $(RUN_WORKERS) -- --config deploy/default.ini \
	    --checkpoint-dir $(RUN_DIR)/checkpoints --report $(RUN_DIR)/report.json $(RUN_OPTS)
	@sh deploy/after-run.sh $(BUILD)/bin $(RUN_DIR)

# Unit, gradient and integration tests in the normal build, then the same
# tests in the AddressSanitizer + UndefinedBehaviorSanitizer build.
test: deps-test
	@$(MAKE) --no-print-directory check-layers check-functions check-layout check-prometheus \
	    check-deploy
	@$(MAKE) --no-print-directory test-normal
	@$(MAKE) --no-print-directory test-san SANITIZE=address,undefined IT_SKIP="$(SAN_IT_SKIP)"
	@$(MAKE) --no-print-directory test-fuzz

# Long runs that do not fit in `make test`: the wire fuzzer for 10 minutes,
# then a 30-minute randomised chaos run (kills, joins, drains, worker
# restarts; CHAOS_SECONDS, CHAOS_SEED) whose final export must equal an
# undisturbed run's, then the containers (about 10 minutes).
CHAOS_SECONDS ?= 1800
CHAOS_SEED ?=
test-long: deps-test
	@$(MAKE) --no-print-directory test-fuzz-long
	@$(MAKE) --no-print-directory test-chaos
	@$(MAKE) --no-print-directory test-containers
	@$(MAKE) --no-print-directory test-integration-long
	@$(MAKE) --no-print-directory test-integration SANITIZE=address,undefined IT_ONLY="$(SAN_LONG_ONLY)"

# Integration tests too slow for make test (tests/integration/long_*.sh).
test-integration-long: $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL)
	MOE_IT_KIND=long sh tests/integration/run.sh $(BUILD)

# The image, docker-compose.yml and the swarm stack, run for real
# (tests/long/containers.sh: starts dockerd if none answers, builds the base
# image offline and the image; installs docker.io, docker-compose and
# debootstrap when missing). CONTAINER_STEPS: the length of each training.
CONTAINER_STEPS ?= 1500
test-containers: $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL)
	sh tests/long/containers.sh $(BUILD) $(CONTAINER_STEPS)

test-chaos: $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL)
	sh tests/long/chaos.sh $(BUILD) $(CHAOS_SECONDS) $(CHAOS_SEED)

test-normal test-san: test-unit test-integration

test-unit: $(TEST_BIN)
	$(TEST_BIN)

# IT_ONLY: run only these tests (names without test_); IT_SKIP: all but
# these. To stay within 15 minutes on 2 cores, make test skips in the
# sanitizer build the slowest cluster tests (elastic, 100 s; operator,
# 57 s), which make test-long runs there, and dashboard, which tests the
# page in Chromium against canned answers (no program of ours runs).
SAN_LONG_ONLY = elastic operator
SAN_IT_SKIP = $(SAN_LONG_ONLY) dashboard
IT_ONLY ?=
IT_SKIP ?=
test-integration: $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL) $(BIN_PROBE) $(BIN_ATTACK)
	MOE_SANITIZE="$(SANITIZE)" MOE_IT_SKIP="$(IT_SKIP)" sh tests/integration/run.sh $(BUILD) $(IT_ONLY)

deps-bench:
	@sh deploy/install-deps.sh --bench

bench: deps-bench $(BENCH_BIN) $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD)
	sh benchmarks/run.sh $(BUILD)

# Translation quality, MoE against dense (issue 19): both trained at once,
# one thread each, for BENCH_MT_SECONDS (default 3600), then BLEU on the
# test split.
BENCH_MT_SECONDS ?= 3600
bench-mt: $(BIN_WORKER) $(BIN_CTL)
	sh benchmarks/bench_mt.sh $(BUILD) benchmarks/results $(BENCH_MT_SECONDS)

# Hierarchical MoE against flat (issue 17, points 6 and 7): tokens/s, gate
# time and FLOPs per row, peak memory at 256, 1024 and 4096 experts on 2
# servers, and validation perplexity of 256-h against flat-256 on
# WikiText-2. Several hours at the default sizes (MoE-4096 twice, about 20
# GB); smaller ones through the environment (benchmarks/bench_hmoe.sh).
bench-hmoe: $(BUILD)/bin/bench_gate $(BIN_WORKER) $(BIN_SERVER) $(BIN_COORD) $(BIN_CTL)
	sh benchmarks/bench_hmoe.sh $(BUILD) benchmarks/results

clean:
	rm -rf build

# ---------------------------------------------------------------------------
# Fuzzing the wire codec (moe_wire_decode) with libFuzzer; not part of `test`.
# Needs clang and its runtime (Debian: clang-14 libclang-rt-14-dev).
#   make fuzz-wire        build $(BUILD)/bin/fuzz_wire
#   make test-fuzz        run it FUZZ_TIME seconds (20) on a fresh copy of the
#                         seeds from tests/fuzz/gen_corpus_wire.c; fails on a crash
#   make test-fuzz-long   the same for FUZZ_LONG_TIME seconds (600)
# Crash inputs are left in $(BUILD)/fuzz/wire/artifacts/.

FUZZ_CC        ?= clang
FUZZ_TIME      ?= 20
FUZZ_LONG_TIME ?= 600
FUZZ_CFLAGS     = $(STD) $(WARN) -Wno-unknown-warning-option -g -O1 -fno-omit-frame-pointer \
                  -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
                  $(INC_COMMON) $(shell pkg-config --cflags libzmq libprotobuf-c)
FUZZ_LIBS       = $(shell pkg-config --libs libzmq libprotobuf-c) -lm
FUZZ_OBJ        = $(BUILD)/fuzz/obj
FUZZ_WIRE_SRC   = tests/fuzz/fuzz_wire.c common/moe_wire.c common/moe_bf16.c common/moe_err.c \
                  common/moe_tensor.c
FUZZ_WIRE_OBJS  = $(FUZZ_WIRE_SRC:%.c=$(FUZZ_OBJ)/%.o) $(FUZZ_OBJ)/proto/moe.pb-c.o
FUZZ_WIRE_BIN   = $(BUILD)/bin/fuzz_wire
FUZZ_WIRE_GEN   = $(BUILD)/bin/gen_corpus_wire
FUZZ_WIRE_DIR   = $(BUILD)/fuzz/wire
# The daemons' decode-and-dispatch path (tests/fuzz/fuzz_dispatch.c): a
# coordinator and an expert server with keys, fed messages from every role.
FUZZ_DISPATCH_SRC = tests/fuzz/fuzz_dispatch.c $(wildcard common/*.c) \
                  $(filter-out server/expert/expert_server_main.c,$(wildcard server/expert/*.c)) \
                  $(filter-out server/coordinator/coord_main.c,$(wildcard server/coordinator/*.c))
FUZZ_DISPATCH_OBJS = $(FUZZ_DISPATCH_SRC:%.c=$(FUZZ_OBJ)/%.o) $(FUZZ_OBJ)/proto/moe.pb-c.o
FUZZ_DISPATCH_BIN = $(BUILD)/bin/fuzz_dispatch
FUZZ_DISPATCH_DIR = $(BUILD)/fuzz/dispatch
$(FUZZ_OBJ)/tests/fuzz/fuzz_dispatch.o: FUZZ_INC = -Iserver/expert -Iserver/coordinator
$(FUZZ_OBJ)/server/expert/%.o: FUZZ_INC = -Iserver/expert
$(FUZZ_OBJ)/server/coordinator/%.o: FUZZ_INC = -Iserver/coordinator

.PHONY: fuzz-wire fuzz-dispatch test-fuzz test-fuzz-long

fuzz-wire: $(FUZZ_WIRE_BIN)
fuzz-dispatch: $(FUZZ_DISPATCH_BIN)

$(FUZZ_OBJ)/%.o: %.c $(PROTO_H)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) $(FUZZ_INC) $(PKG_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_OBJ)/proto/moe.pb-c.o: $(PROTO_C)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Wno-missing-prototypes -MMD -MP -c $< -o $@

$(FUZZ_WIRE_BIN): $(FUZZ_WIRE_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(FUZZ_LIBS)

$(FUZZ_DISPATCH_BIN): $(FUZZ_DISPATCH_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -fsanitize=fuzzer,address,undefined -o $@ $^ $(PKG_LIBS)

$(FUZZ_WIRE_GEN): tests/fuzz/gen_corpus_wire.c $(BUILD)/obj/proto/moe.pb-c.o $(PROTO_H)
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -o $@ $< $(BUILD)/obj/proto/moe.pb-c.o $(ALL_LDFLAGS) \
	    $(shell pkg-config --libs libprotobuf-c)

$(FUZZ_WIRE_DIR)/seeds.stamp: $(FUZZ_WIRE_GEN)
	@rm -rf $(FUZZ_WIRE_DIR)/seeds && mkdir -p $(FUZZ_WIRE_DIR)/seeds
	$(FUZZ_WIRE_GEN) $(FUZZ_WIRE_DIR)/seeds
	@touch $@

test-fuzz: FUZZ_WIRE_SECONDS = $(FUZZ_TIME)
test-fuzz-long: FUZZ_WIRE_SECONDS = $(FUZZ_LONG_TIME)
test-fuzz test-fuzz-long: $(FUZZ_WIRE_BIN) $(FUZZ_DISPATCH_BIN) $(FUZZ_WIRE_DIR)/seeds.stamp
	@rm -rf $(FUZZ_WIRE_DIR)/corpus && mkdir -p $(FUZZ_WIRE_DIR)/corpus $(FUZZ_WIRE_DIR)/artifacts
	cp $(FUZZ_WIRE_DIR)/seeds/* $(FUZZ_WIRE_DIR)/corpus/
	$(FUZZ_WIRE_BIN) -max_total_time=$(FUZZ_WIRE_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_WIRE_DIR)/artifacts/ $(FUZZ_WIRE_DIR)/corpus
	@# the same seeds for every daemon, role and peer (byte 0 of fuzz_dispatch.c)
	@rm -rf $(FUZZ_DISPATCH_DIR)/corpus && mkdir -p $(FUZZ_DISPATCH_DIR)/corpus $(FUZZ_DISPATCH_DIR)/artifacts
	@for f in $(FUZZ_WIRE_DIR)/seeds/*; do for w in 002 003 012 025 043 053 063 073 102 112 103 113; do \
	    printf "\\$$w" | cat - "$$f" >"$(FUZZ_DISPATCH_DIR)/corpus/$$w-$${f##*/}"; done; done
	$(FUZZ_DISPATCH_BIN) -max_total_time=$(FUZZ_WIRE_SECONDS) -timeout=10 -rss_limit_mb=2048 \
	    -print_final_stats=1 -artifact_prefix=$(FUZZ_DISPATCH_DIR)/artifacts/ $(FUZZ_DISPATCH_DIR)/corpus

-include $(shell find $(FUZZ_OBJ) -name '*.d' 2>/dev/null)
