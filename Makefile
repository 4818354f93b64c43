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
SWEEP ?=
# A sweep's point (<sweep>/points/<i>.toml) runs as `python -m scenarios.sweep point <sweep> <i>`:
# its run goes under <sweep>/results/<i>/, where `python -m scenarios.sweep merge` finds it.
SWEEP_POINT = $(if $(SCENARIO),$(if $(wildcard $(dir $(SCENARIO))../sweep.json),$(dir $(SCENARIO)).. $(basename $(notdir $(SCENARIO)))))

.PHONY: setup lint test test-pure test-kernel test-slurm run-scenario run-scenario-loaded report compare targets reference kernel-run probe bench clean image container-test sweep sweep-run sweep-slurm sweep-merge

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

# The sweep through a one-node Slurm cluster, as an ordinary user (part of `make test` as root).
test-slurm: setup
	$(PY) -m pytest -q tests/host/test_slurm_sweep.py $(PYTEST_ARGS)

# The scenario file is checked on the host first: a bad field costs one line, not a guest boot.
run-scenario: setup
	$(PY) -m scenarios.config $(SCENARIO)
	$(if $(SWEEP_POINT),$(PY) -m scenarios.sweep point $(SWEEP_POINT),$(KERNEL_RUN) $(PY) -m scenarios.runner.run $(if $(SCENARIO),--scenario $(SCENARIO)))

# The main job while every core of the host is kept busy by other processes (stress-ng).
run-scenario-loaded: setup
	bash scripts/loaded-run.sh

# Redraw table, plots and report.html from a stored run, without rerunning it (no root or kernel
# needed); for a sweep's directory, merge its points again.
report:
	@test -n "$(RUN)" || { echo "usage: make report RUN=results/<scenario>/<run-id>"; exit 2; }
	if [ -f "$(RUN)/sweep.json" ]; then $(PY) -m scenarios.sweep merge $(RUN); \
	else $(PY) -m scenarios.analysis.report $(RUN); fi

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

# Sweeps (docs/sweeps.md): `make sweep SCENARIO=file.toml` plans the points (prints the sweep's
# directory); `make sweep-run SWEEP=dir` runs them here one after the other, then merges;
# `make sweep-slurm SWEEP=dir [SUBMIT=1]` writes (and submits) the job array; `make sweep-merge
# SWEEP=dir` merges whatever points have run.
sweep:
	@test -n "$(SCENARIO)" || { echo "usage: make sweep SCENARIO=file.toml"; exit 2; }
	$(PY) -m scenarios.sweep plan $(SCENARIO)

sweep-run: setup
	@test -n "$(SWEEP)" || { echo "usage: make sweep-run SWEEP=<sweep dir>"; exit 2; }
	$(PY) -m scenarios.sweep run $(SWEEP)

sweep-slurm:
	@test -n "$(SWEEP)" || { echo "usage: make sweep-slurm SWEEP=<sweep dir> [SUBMIT=1]"; exit 2; }
	$(PY) -m scenarios.sweep slurm $(SWEEP) $(if $(SUBMIT),--submit)

sweep-merge:
	@test -n "$(SWEEP)" || { echo "usage: make sweep-merge SWEEP=<sweep dir>"; exit 2; }
	$(PY) -m scenarios.sweep merge $(SWEEP)
