# Two commands do everything on a fresh Debian machine (as root):
#   make demo   set up, then capture across the embedded network-namespace lab
#   make test   set up, then ruff and the whole test suite (integration tests included)
.PHONY: setup demo test lint bench-quick ansible-sanity clean

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/xdpcap demo

test: setup
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/pytest -q

bench-quick: setup
	.venv/bin/python bench/merge --quick
	.venv/bin/python bench/capture --quick
	.venv/bin/python bench/egress --quick

# ansible-test sanity on the xdpcap.capture collection (its test venvs come from PyPI)
ansible-sanity: setup
	./scripts/ansible-sanity.sh

clean:
	rm -rf .venv build *.egg-info xdpcap-runs
