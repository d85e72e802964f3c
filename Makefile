# sdlab — the two commands a newcomer needs:
#   sudo make scenario NAME=lossy-5pct
#   sudo make test
# The first use of any target sets up .venv (scripts/setup.sh).
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.sdlab-installed
NAME  ?=
ARGS  ?=

.PHONY: setup scenario test test-unit linkcheck doctor clean-net vm-test help

help:
	@echo "sudo make scenario NAME=lossy-5pct   run a scenario (scenarios/: $$(ls scenarios | sed 's/.yaml//' | tr '\n' ' '))"
	@echo "sudo make test                       the whole test suite (unit, netns, e2e, validation)"
	@echo "sudo make linkcheck | doctor | clean-net | vm-test | setup"

$(STAMP): pyproject.toml scripts/setup.sh
	@bash scripts/setup.sh

setup: $(STAMP)

define need_root
	@if [ "$$(id -u)" -ne 0 ]; then echo "$@ needs root (network namespaces, qdiscs): sudo make $@ $(if $(NAME),NAME=$(NAME))"; exit 2; fi
endef

scenario: $(STAMP)
	$(need_root)
	@if [ -z "$(NAME)" ]; then echo "usage: sudo make scenario NAME=<one of: $$(ls scenarios | sed 's/.yaml//' | tr '\n' ' ')>"; exit 2; fi
	$(PY) -m lab scenario $(NAME) $(ARGS)

test: $(STAMP)
	$(need_root)
	@# the whole suite tests the optional Ray path too: install that extra unless SDLAB_EXTRAS says otherwise
	SDLAB_EXTRAS=$${SDLAB_EXTRAS-ray} bash scripts/test.sh

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit -q

linkcheck: $(STAMP)
	$(need_root)
	$(PY) -m lab linkcheck $(ARGS)

doctor: $(STAMP)
	$(PY) -m lab doctor

# netem for real on a kernel without it: a Debian kernel under qemu (vm/run.py), the host's userland.
vm-test: $(STAMP)
	$(need_root)
	$(PY) -m vm.run --timeout-s 1200 -- bash vm/test.sh

clean-net: $(STAMP)
	$(need_root)
	$(PY) -m lab link down
