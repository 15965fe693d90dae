# Makefile: builds the realnvp library, CLI, server, trainer and Check tests into bin/.
# Leaves out packaging (deploy/) and long benchmarks (bench/, run by hand).
CC      ?= cc
OPT     ?= -O2 -g -ftree-vectorize
CFLAGS  := $(OPT) -std=c11 -D_GNU_SOURCE -Wall -Wextra -Iinclude -Icore -MMD -MP
LDLIBS  := -lopenblas -lpng -lz -ljansson -lm -lpthread
SRVLIBS := -lmicrohttpd
TESTLIBS:= $(shell pkg-config --libs check 2>/dev/null || echo -lcheck -lsubunit -lrt -lm -lpthread)
B       := build
CORE_OBJ  := $(patsubst %.c,$(B)/%.o,$(wildcard core/*.c))
TRAIN_OBJ := $(patsubst %.c,$(B)/%.o,$(filter-out train/main.c train/dist.c,$(wildcard train/*.c)))
# data-parallel training (train/dist.c) with MPI when mpicc is found (Debian: libopenmpi-dev), else
# one process; USE_MPI=0 forces the latter. Only bin/realnvp-train links MPI.
MPICC   ?= $(shell command -v mpicc 2>/dev/null)
USE_MPI ?= $(if $(MPICC),1,0)
ifeq ($(USE_MPI),1)
DIST_CC := $(MPICC) -DUSE_MPI
TRAIN_LD := $(MPICC)
else
DIST_CC := $(CC)
TRAIN_LD := $(CC)
endif
SRV_OBJ   := $(patsubst %.c,$(B)/%.o,$(filter-out server/main.c,$(wildcard server/*.c))) $(B)/gen/web_index.o
TESTS     := $(patsubst tests/%.c,bin/%,$(wildcard tests/test_*.c))
PROGS     := bin/realnvp $(if $(wildcard server/main.c),bin/realnvp-server) $(if $(wildcard train/main.c),bin/realnvp-train) $(if $(wildcard bench/bench_core.c),bin/bench_core) $(if $(wildcard bench/bench_train.c),bin/bench_train) bin/bench_server $(if $(wildcard bench/soak.c),bin/soak) $(if $(wildcard bench/attack.c),bin/attack)

VERSION := $(shell sed -n 's/^\#define RNVP_VERSION "\(.*\)"/\1/p' include/realnvp.h)
SOMAJOR := $(firstword $(subst ., ,$(VERSION)))
SOLIB   := $(B)/librealnvp.so.$(VERSION)
PREFIX  ?= /usr/local
LIBDIR  ?= $(PREFIX)/lib
MAN1    := $(B)/man/realnvp.1 $(B)/man/realnvp-server.1 $(B)/man/realnvp-train.1

# build every program and the shared library
all: $(PROGS) $(SOLIB)

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# the demo page (GET /) as a C array in the server
$(B)/gen/web_index.c: server/web/index.html tools/embed.sh Makefile
	@mkdir -p $(dir $@)
	sh tools/embed.sh $< srv_web_index > $@.tmp && mv $@.tmp $@
$(B)/gen/web_index.o: $(B)/gen/web_index.c
	$(CC) $(CFLAGS) -c $< -o $@

# archives are rebuilt from scratch so objects of deleted sources never linger
$(B)/librnvp.a: $(CORE_OBJ)
	rm -f $@; ar rcs $@ $^
$(B)/libtrain.a: $(TRAIN_OBJ)
	rm -f $@; ar rcs $@ $^
$(B)/libserver.a: $(SRV_OBJ)
	rm -f $@; ar rcs $@ $^

# the shared library: the core compiled again as position-independent code (the programs and
# librealnvp.a keep the default code: about 0.5% faster); only the rnvp_ API is exported
# (core/exports.map), and calls inside the library skip symbol interposition
PIC_OBJ := $(patsubst %.c,$(B)/pic/%.o,$(wildcard core/*.c))
$(B)/pic/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -fPIC -fno-semantic-interposition -c $< -o $@
$(SOLIB): $(PIC_OBJ) core/exports.map
	$(CC) -shared -Wl,-soname,librealnvp.so.$(SOMAJOR) -Wl,--version-script=core/exports.map -Wl,--no-undefined \
	  $(PIC_OBJ) -o $@ $(LDFLAGS) $(LDLIBS)

bin/realnvp: $(B)/cli/realnvp.o $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
bin/realnvp-server: $(B)/server/main.o $(B)/libserver.a $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(SRVLIBS) $(LDLIBS)
# dist.o depends on the MPI choice: rebuilt when it changes
$(B)/train/dist.o: train/dist.c $(B)/mpi-$(USE_MPI).stamp
	@mkdir -p $(dir $@)
	$(DIST_CC) $(CFLAGS) -c $< -o $@
$(B)/mpi-$(USE_MPI).stamp:
	@mkdir -p $(B); rm -f $(B)/mpi-*.stamp; touch $@
bin/realnvp-train: $(B)/train/main.o $(B)/train/dist.o $(B)/libtrain.a $(B)/librnvp.a
	@mkdir -p bin
	$(TRAIN_LD) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
bin/bench_core: $(B)/bench/bench_core.o $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
# training-speed benchmark: the trainer's passes + Adam, timed (bench/run_train_bench.sh runs it)
bin/bench_train: $(B)/bench/bench_train.o $(B)/libtrain.a $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
bin/bench_server: $(B)/bench/bench_server.o
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) -lpthread
# hostile-load client: one attack against a running server, peak RSS and /healthz latency (bench/run_attack.sh)
bin/attack: $(B)/bench/attack.o $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
# soak test client: starts the server on 127.0.0.1, 64 clients of mixed traffic (make soak runs it)
bin/soak: $(B)/bench/soak.o $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(LDLIBS)
bin/test_%: $(B)/tests/test_%.o $(if $(SRV_OBJ),$(B)/libserver.a) $(if $(TRAIN_OBJ),$(B)/libtrain.a) $(B)/librnvp.a
	@mkdir -p bin
	$(CC) $(CFLAGS) $^ -o $@ $(LDFLAGS) $(SRVLIBS) $(LDLIBS) $(TESTLIBS)

# build and run the whole Check suite and the Python client's tests (the README's test command; .ci/run calls it)
test: $(PROGS) $(TESTS)
	@OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-2} tests/run_all.sh $(TESTS) tests/test_mpi.sh tests/test_torch_twin.sh clients/python/tests/test_client.py

# the browser demo's end-to-end test in headless Chromium (skips with a message when Chromium or node is missing)
test-web: all
	tests/web/run.sh

# the same suite under AddressSanitizer and UndefinedBehaviorSanitizer (rebuilds from clean; Check timeouts x4 for ASan's slowdown)
asan:
	$(MAKE) clean
	ASAN_OPTIONS=detect_leaks=1 CK_TIMEOUT_MULTIPLIER=$${CK_TIMEOUT_MULTIPLIER:-4} $(MAKE) USE_MPI=0 OPT="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined" LDFLAGS="-fsanitize=address,undefined" test
	$(MAKE) clean

# run every libFuzzer harness in tests/fuzz for FUZZ_SECONDS each (clang; corpora copied to build-fuzz/, a crash fails)
FUZZ_SECONDS ?= 30
FUZZ_BASE   := -std=c11 -D_GNU_SOURCE -g -O1 -fno-sanitize-recover=undefined -Iinclude -Icore -Iserver
FUZZ_CFLAGS := $(FUZZ_BASE) -fsanitize=fuzzer,address,undefined
FUZZ_OBJ    := $(patsubst core/%.c,build-fuzz/core/%.o,$(wildcard core/*.c))
build-fuzz/core/%.o: core/%.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_BASE) -fsanitize=fuzzer-no-link,address,undefined -c $< -o $@
fuzz: $(FUZZ_OBJ)
	@mkdir -p build-fuzz
	@set -e; fail=""; for h in tests/fuzz/fuzz_*.c; do n=$$(basename $$h .c); \
	  clang $(FUZZ_CFLAGS) $$h $(FUZZ_OBJ) $$(cat tests/fuzz/$$n.extra 2>/dev/null) -o build-fuzz/$$n $(SRVLIBS) $(LDLIBS); \
	  rm -rf build-fuzz/corpus_$$n; mkdir -p build-fuzz/corpus_$$n; cp -r tests/fuzz/corpus_$${n#fuzz_}/. build-fuzz/corpus_$$n/ 2>/dev/null || true; \
	  echo "== $$n for $(FUZZ_SECONDS) s"; \
	  if build-fuzz/$$n -max_total_time=$(FUZZ_SECONDS) -max_len=65536 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	       -artifact_prefix=build-fuzz/$$n- build-fuzz/corpus_$$n >build-fuzz/$$n.log 2>&1; then st=ok; else st=CRASH; fail="$$fail $$n"; fi; \
	  tail -n 12 build-fuzz/$$n.log; \
	  echo "fuzz-summary: $$n $$st $$(grep -E '^#[0-9]+' build-fuzz/$$n.log | tail -n 1 | tr -s ' \t' ' ')"; \
	done; \
	if [ -n "$$fail" ]; then echo "fuzz: failed:$$fail (reproducers: build-fuzz/fuzz_*-crash-*, logs: build-fuzz/*.log)"; exit 1; fi

# soak the server for SOAK_SECONDS with 64 clients of mixed valid/invalid traffic (docs/reliability.md)
SOAK_SECONDS ?= 45
soak: bin/realnvp-server bin/soak
	bin/soak --seconds $(SOAK_SECONDS)

# man pages from each program's --help and --version (help2man)
$(B)/man/realnvp.1: H2M_NAME = exact likelihoods, latent codes and samples of Real NVP models
$(B)/man/realnvp-server.1: H2M_NAME = serve a Real NVP model over HTTP
$(B)/man/realnvp-train.1: H2M_NAME = train a Real NVP model
$(B)/man/%.1: bin/%
	@mkdir -p $(dir $@)
	@command -v help2man >/dev/null || { echo "help2man is missing: apt-get install help2man (make deps installs it)"; exit 1; }
	help2man --no-info --no-discard-stderr --version-string=$(VERSION) --name="$(H2M_NAME)" --output=$@.tmp ./$< && mv $@.tmp $@

# install the library (shared and static), header, pkg-config file, programs and man pages under
# $(DESTDIR)$(PREFIX) (default /usr/local); uninstall removes exactly those files
install: $(PROGS) $(SOLIB) $(MAN1)
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(LIBDIR)/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/share/man/man1
	install -m 755 bin/realnvp bin/realnvp-server bin/realnvp-train $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(B)/librnvp.a $(DESTDIR)$(LIBDIR)/librealnvp.a
	install -m 755 $(SOLIB) $(DESTDIR)$(LIBDIR)/
	ln -sf librealnvp.so.$(VERSION) $(DESTDIR)$(LIBDIR)/librealnvp.so.$(SOMAJOR)
	ln -sf librealnvp.so.$(SOMAJOR) $(DESTDIR)$(LIBDIR)/librealnvp.so
	install -m 644 include/realnvp.h $(DESTDIR)$(PREFIX)/include/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' -e 's|@VERSION@|$(VERSION)|' tools/realnvp.pc.in > $(DESTDIR)$(LIBDIR)/pkgconfig/realnvp.pc
	install -m 644 $(MAN1) $(DESTDIR)$(PREFIX)/share/man/man1/
	@echo "installed under $(DESTDIR)$(PREFIX); outside the loader's paths, run ldconfig or set LD_LIBRARY_PATH=$(LIBDIR)"
uninstall:
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/bin/,realnvp realnvp-server realnvp-train) $(DESTDIR)$(PREFIX)/include/realnvp.h
	rm -f $(addprefix $(DESTDIR)$(LIBDIR)/,librealnvp.a librealnvp.so librealnvp.so.$(SOMAJOR) librealnvp.so.$(VERSION) pkgconfig/realnvp.pc)
	rm -f $(addprefix $(DESTDIR)$(PREFIX)/share/man/man1/,realnvp.1 realnvp-server.1 realnvp-train.1)

# install into a temporary prefix and use it as a user would: pkg-config builds examples/, which
# runs on the bundled model; only rnvp_ symbols exported; the man pages render (CI runs this)
install-check: all
	tools/install-check.sh

# install the Debian packages the build and tests need (uses sudo when not root)
deps:
	@tools/install-deps.sh

# check deploy/ (Dockerfile, compose, k8s) field by field with python3-yaml; sudo deploy/fresh-check.sh is the long end-to-end check
deploy-check:
	python3 deploy/check-manifests.py --self-test

# build and serve the bundled Fashion-MNIST model on 127.0.0.1:8080
run: deps all
	bin/realnvp-server --model-repository models

# the server load benchmark: batched vs --max-batch 1 vs the core's batch-64 ceiling (prints a table)
bench-server: all
	bench/run_server_bench.sh

# remove build outputs
clean:
	rm -rf build build-asan build-fuzz bin

.PHONY: all test test-web asan fuzz soak deps run bench-server deploy-check clean
-include $(shell find build -name '*.d' 2>/dev/null)
