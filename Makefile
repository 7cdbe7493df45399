# The two commands of the README: `make demo` sets everything up and runs the main job; `make test` runs the suite.
VENV ?= .venv

.PHONY: setup demo test clean
setup:
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/revsnn demo

test: setup
	$(VENV)/bin/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
