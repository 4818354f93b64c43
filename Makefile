# The two commands a user types (as root): `sudo make run-scenario` and `sudo make test`.
# Both run the idempotent set-up first, then run their work in a kernel that has what the
# testbed needs (the host's, or the UML guest's: see topo/kernel.py).

PY := .venv/bin/python
KERNEL_RUN := $(PY) -m topo.kernel run --
SCENARIO ?=
RUN ?=
A ?=
B ?=
CMD ?= true
PYTEST_ARGS ?=

.PHONY: setup lint test test-pure test-kernel run-scenario run-scenario-loaded report compare targets reference kernel-run probe bench clean image container-test

setup:
	@bash scripts/setup.sh

# The linter and the type checker, configured in pyproject.toml (what each checks, and how strictly).
lint: setup
	$(PY) -m ruff check .
	$(PY) -m mypy

# Pure tests (codecs, engines, metrics, the guest runner) run directly; kernel tests run once,
# in one kernel boot, wherever topo.kernel decides.
test: setup
	$(PY) -m pytest -q tests --ignore=tests/kernel $(PYTEST_ARGS)
	$(KERNEL_RUN) $(PY) -m pytest -q tests/kernel $(PYTEST_ARGS)

test-pure: setup
	$(PY) -m pytest -q tests --ignore=tests/kernel $(PYTEST_ARGS)

test-kernel: setup
	$(KERNEL_RUN) $(PY) -m pytest -q tests/kernel $(PYTEST_ARGS)

# The scenario file is checked on the host first: a bad field costs one line, not a guest boot.
run-scenario: setup
	$(PY) -m scenarios.config $(SCENARIO)
	$(KERNEL_RUN) $(PY) -m scenarios.runner.run $(if $(SCENARIO),--scenario $(SCENARIO))

# The main job while every core of the host is kept busy by other processes (stress-ng).
run-scenario-loaded: setup
	bash scripts/loaded-run.sh

# Redraw table and plots from a stored run, without rerunning it (no root or kernel needed).
report:
	@test -n "$(RUN)" || { echo "usage: make report RUN=results/<scenario>/<run-id>"; exit 2; }
	$(PY) -m scenarios.analysis.report $(RUN)

# Difference of the median interruptions of two stored runs, per method and direction, with
# 95% intervals: make compare A=results/<scenario>/<run> B=results/<scenario>/<run>
compare:
	@test -n "$(A)" -a -n "$(B)" || { echo "usage: make compare A=<run dir> B=<run dir>"; exit 2; }
	$(PY) -m scenarios.analysis.compare $(A) $(B)

# The performance targets (security overheads, CTAR -> CTAA, EAP against CXTP, fidelity, and with B
# the agreement of two runs), judged on stored runs: make targets A=<run dir> [B=<run dir>]
targets:
	@test -n "$(A)" || { echo "usage: make targets A=<run dir> [B=<run dir>]"; exit 2; }
	$(PY) -m scenarios.analysis.targets $(A) $(B)

# Keep a reported run's compact part (records, figures, plots, table) in results/reference/
reference:
	@test -n "$(RUN)" || { echo "usage: make reference RUN=results/<scenario>/<run-id>"; exit 2; }
	$(PY) -m scenarios.analysis.reference $(RUN)

kernel-run: setup
	$(KERNEL_RUN) sh -c '$(CMD)'

probe: setup
	$(PY) -m topo.kernel probe

bench: setup
	$(KERNEL_RUN) sh -c 'for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done'

clean:
	rm -rf .pytest_cache .hypothesis .mypy_cache .ruff_cache

# The testbed in its OCI image (docs/containers.md): `make image` builds it, or reuses it while
# Containerfile, scripts/setup.sh and requirements.txt are unchanged; `make container-test` runs
# the kernel probe and scenarios/smoke.toml in it, privileged and unprivileged, results in
# results/ (FULL=1: also .ci/run in it).
image:
	@bash scripts/image.sh

container-test:
	@bash scripts/container-test.sh
