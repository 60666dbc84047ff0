# ObjectFS developer entry points.  Everything installs what it needs first
# (Debian packages via apt, then a .venv with the package and its test extras),
# so each target works on a fresh Debian 12 machine as root.

PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
# fuse3 + headers to build pyfuse3; s3fs for the interop tests; systemd for the
# unit tests (systemd-analyze, the fstab generator, systemd --user; never booted).
APT_PKGS := fuse3 libfuse3-dev pkg-config gcc python3-dev python3-venv s3fs systemd
# OpenStack Swift's s3api, for benchmarks against a production S3 implementation.
SWIFT_PKGS := swift swift-proxy swift-object swift-container swift-account memcached python3-swift curl
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Where "make install" puts things.  mount(8) looks for mount.TYPE helpers in
# /sbin only (and /sbin/fs.d, /sbin/fs); mount.fuse3 and systemd find
# objectfs in /usr/local/bin.  DESTDIR stages the files elsewhere.
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
SBINDIR ?= /sbin
UNITDIR ?= $(PREFIX)/lib/systemd/system
DESTDIR ?=

.PHONY: help deps venv demo demo-stop test unit integration soak posix-score bench bench-deps swift-deps clean install install-files uninstall

help:
	@echo "make demo   - set up, start a local S3 server, mount a bucket and show it working"
	@echo "make test   - set up, then run the whole test suite (about 15 minutes)"
	@echo "make venv   - build .venv alone"
	@echo "make soak   - long randomized and fault-injection runs"
	@echo "make bench  - side-by-side benchmarks (ObjectFS, s3fs, rclone, boto3)"
	@echo "make posix-score - run posix_suite against every available filesystem"
	@echo "make install - set up, then install objectfs, mount.objectfs and the systemd unit"
	@echo "make uninstall - remove what make install installed"

deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@[ -e /dev/fuse ] || { echo "/dev/fuse is missing: FUSE is not available on this machine" >&2; exit 1; }

swift-deps:
	@missing=""; for p in $(SWIFT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml | deps
	[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	touch $@

demo: venv
	$(VPY) -m objectfs.demo

demo-stop:
	$(VPY) -m objectfs.demo stop

test: venv
	$(VPY) -m pytest tests $(PYTEST_ARGS)

unit: venv
	$(VPY) -m pytest tests/unit $(PYTEST_ARGS)

integration: venv
	$(VPY) -m pytest tests/integration $(PYTEST_ARGS)

soak: venv
	OBJECTFS_SOAK=1 OBJECTFS_TEST_WATCHDOG=3600 $(VPY) -m pytest -m slow -s tests $(PYTEST_ARGS)

posix-score: venv
	$(VPY) posix_suite/score.py

bench-deps: venv swift-deps
	$(VPY) -m pip install -q -e '.[test,bench]'

bench: bench-deps
	$(VPY) benchmarks/run.py --server swift

install: venv install-files

# The files alone, for a venv that already exists (VENV=/path/to/venv).
install-files:
	@[ -x $(VENV)/bin/objectfs ] || { echo "$(VENV)/bin/objectfs is missing: run make venv or pass VENV=" >&2; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR)
	ln -sfn $(abspath $(VENV))/bin/objectfs $(DESTDIR)$(BINDIR)/objectfs
	sed 's|^OBJECTFS=.*|OBJECTFS=$(BINDIR)/objectfs|' mount_helpers/mount.objectfs \
	  > $(DESTDIR)$(SBINDIR)/mount.objectfs
	chmod 755 $(DESTDIR)$(SBINDIR)/mount.objectfs
	sed 's|/usr/local/bin/objectfs|$(BINDIR)/objectfs|' etc/objectfs@.service \
	  > $(DESTDIR)$(UNITDIR)/objectfs@.service
	chmod 644 $(DESTDIR)$(UNITDIR)/objectfs@.service
	@# user mounts from fstab run objectfs as the user: say so if they cannot
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && command -v runuser >/dev/null && \
	    ! runuser -u nobody -- $(BINDIR)/objectfs --version >/dev/null 2>&1; then \
	  echo "warning: users other than root cannot run $(BINDIR)/objectfs (is the venv or its" \
	       "Python under a private directory such as /root?): fstab lines with 'user' will fail" >&2; \
	fi

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/objectfs $(DESTDIR)$(SBINDIR)/mount.objectfs \
	  $(DESTDIR)$(UNITDIR)/objectfs@.service

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
