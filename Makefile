# Quick start: `make demo` and `make test`; both create .venv when it is missing.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-slow bench bench-large bench-trained clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) (SPU wheels exist for Python 3.10-3.11); set PYTHON=..."; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) -m tools.demo

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

# The three benchmark models of docs/bench.md, one after the other (~25 minutes on 2 cores): a table each, JSON in
# out/bench/.
bench: $(VENV)/.installed
	mkdir -p out/bench
	$(PY) -m tools.cli bench models/cipherdm_mnist_unet.onnx --public timestep --repeats 3 --json out/bench/mnist.json --markdown
	$(PY) -m tools.cli bench models/unet2d_attn_32.ts17.onnx --inputs models/unet2d_attn_32.ts17.npz --repeats 3 --json out/bench/unet2d_attn_32.json --markdown
	$(PY) -m tools.cli bench tests/fixtures/unet2d_attn.ts17.onnx --inputs tests/fixtures/unet2d_attn.ts17.npz --repeats 5 --json out/bench/unet2d_attn.json --markdown

# google/ddpm-cifar10-32's UNet2DModel at full size (35.7M parameters, random weights; 143 MB, so exported here
# rather than shipped): needs the models extra (torch, diffusers) for the export. About 20 minutes.
BENCH_LARGE := out/bench-models/ddpm_cifar10.ts17
bench-large: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[models]'
	$(PY) -m models.export_fixtures --bench ddpm_cifar10
	mkdir -p out/bench
	$(PY) -m tools.cli bench $(BENCH_LARGE).onnx --inputs $(BENCH_LARGE).npz --calibration $(BENCH_LARGE).calib.npz --repeats 2 --json out/bench/ddpm_cifar10.json --markdown

# The trained MNIST U-Nets (docs/bench.md): the demo's (base 16, class labels) and the CipherDM architecture's
# (base 4, unconditional; models/mnist_base4, `python -m models.train_mnist --base-channels 4 --unconditional
# --max-steps 14400 --threads 1 --out models/mnist_base4`, 22 minutes). Each calibrated on one DDIM trajectory (seed 1000), benched
# on another's step at t = 473 (seed 0, case 10). About 20 minutes.
bench-trained: $(VENV)/.installed
	mkdir -p out/bench
	$(PY) -m tools.cli trajectory models/mnist/mnist_unet.onnx --steps 20 --seed 1000 -o out/bench/mnist_trained.calib.npz
	$(PY) -m tools.cli trajectory models/mnist/mnist_unet.onnx --steps 20 --seed 0 -o out/bench/mnist_trained.traj.npz
	$(PY) -m tools.cli bench models/mnist/mnist_unet.onnx --inputs out/bench/mnist_trained.traj.npz --case 10 --calibration out/bench/mnist_trained.calib.npz --public timestep --repeats 2 --json out/bench/mnist_trained.json --markdown
	$(PY) -m tools.cli trajectory models/mnist_base4/mnist_unet.onnx --steps 20 --seed 1000 -o out/bench/mnist_base4.calib.npz
	$(PY) -m tools.cli trajectory models/mnist_base4/mnist_unet.onnx --steps 20 --seed 0 -o out/bench/mnist_base4.traj.npz
	$(PY) -m tools.cli bench models/mnist_base4/mnist_unet.onnx --inputs out/bench/mnist_base4.traj.npz --case 10 --calibration out/bench/mnist_base4.calib.npz --public timestep --repeats 2 --json out/bench/mnist_base4.json --markdown

clean:
	rm -rf out build *.egg-info
