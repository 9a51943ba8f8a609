# One way to do things: the README, CI and the scripts all go through these targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: setup system-deps test test-slow test-tf lint format bench bench-ref bench-gpu corpus demo study clean

# System libraries: FluidSynth renders the offline corpus; FFmpeg is what torchcodec decodes
# datasets' Audio columns and the formats soundfile cannot read with (needs root for apt-get).
# The General MIDI SoundFonts of the diverse corpus (modeling_mscl.corpora.soundfonts; the
# default corpus needs none of them: it uses the TimGM6mb copy inside the pretty_midi wheel).
SOUNDFONT_PACKAGES = fluid-soundfont-gm musescore-general-soundfont-small timgm6mb-soundfont
system-deps:
	@if ! ldconfig -p | grep -q libfluidsynth || ! command -v mma >/dev/null || ! ldconfig -p | grep -q libavcodec \
		|| ! dpkg -s $(SOUNDFONT_PACKAGES) >/dev/null 2>&1; then \
		echo "installing fluidsynth, mma, ffmpeg and the GM SoundFonts with apt-get"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libfluidsynth3 mma ffmpeg $(SOUNDFONT_PACKAGES) >/dev/null; \
	fi

# torch goes in first from the pinned CPU wheel: left to itself pip picks a multi-GB CUDA build.
$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt torch
	$(BIN)/pip install -q -c constraints.txt -e ".[audio,corpus,train,dev,search]"
	touch $@

setup: system-deps $(BIN)/.installed

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The TensorFlow reference converter is checked in its own environment (tensorflow-cpu 2.15
# wants numpy < 2), against a Keras model built with random weights.
VENV_TF ?= .venv-tf
$(VENV_TF)/bin/.installed: constraints-tf.txt pyproject.toml
	$(PYTHON) -m venv $(VENV_TF)
	$(VENV_TF)/bin/pip install -q --upgrade pip
	$(VENV_TF)/bin/pip install -q -c constraints-tf.txt torch
	$(VENV_TF)/bin/pip install -q -c constraints-tf.txt tensorflow-cpu numpy transformers huggingface_hub safetensors Jinja2 PyYAML pytest
	$(VENV_TF)/bin/pip install -q --no-deps -e .
	touch $@

test-tf: $(VENV_TF)/bin/.installed
	TF_CPP_MIN_LOG_LEVEL=2 $(VENV_TF)/bin/python -m pytest -q -m slow tests/test_convert.py tests/test_step_parity.py \
		tests/test_benchmark_reference.py

lint: setup
	$(BIN)/ruff format --check modeling_mscl scripts tests
	$(BIN)/ruff check modeling_mscl scripts tests

format: setup
	$(BIN)/ruff format modeling_mscl scripts tests
	$(BIN)/ruff check --fix modeling_mscl scripts tests

# The main job: corpus, stems, COLA + MSCL pre-training, probes, figure, reload (under 15 min
# on 2 cores, set-up included).
demo: setup
	$(BIN)/python scripts/demo.py

# The seeded comparison: COLA, MSCL, drums-only and vocals-only MSCL over 3 seeds, with
# baselines, stem retrieval, steering and convergence bands (estimated 40-60 min on 2 cores).
study: setup
	$(BIN)/python scripts/study.py

corpus: setup
	$(BIN)/python scripts/build_corpus.py --out data_cache/corpus

bench: setup
	$(BIN)/python scripts/benchmark_foundation.py

# Side by side with the TensorFlow reference: each side in its own environment and process,
# alternating over 3 rounds, each after waiting up to 60 s for a quiet machine (10-20 min
# on 2 cores).
bench-ref: setup $(VENV_TF)/bin/.installed
	$(BIN)/python scripts/benchmark_reference.py --tf-python $(VENV_TF)/bin/python --torch-python $(BIN)/python

# Wheels for scripts/benchmark_gpu.py on a GPU machine without network whose image holds
# Python 3.12, torch, torchaudio, transformers, accelerate, huggingface_hub and numpy: the
# other packages it imports (pyarrow included: the image has none) and their
# dependencies, at the pins of constraints.txt, and this package. The benchmark's
# preflight names any that is still missing there and skips the sections that need
# it. Left out, 60 MB that the benchmark
# never imports: scikit-learn, scipy, joblib, threadpoolctl (the probes) and sphn
# (demucs.api's audio reader). The install folder's name must hold "site-packages":
# datasets' hashing (dill) pickles modules from elsewhere outside sys.prefix by value,
# which fails on pyarrow's.
GPU_WHEELS := datasets pyarrow dill multiprocess xxhash pandas python-dateutil tzdata \
	demucs einops julius lameenc soundfile cffi pycparser
GPU_TARGET := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

bench-gpu: setup
	rm -rf wheels-gpu build  # build/: a stale copy of a deleted module would ship
	@for name in $(GPU_WHEELS); do \
		pin=$$(grep -i "^$$name==" constraints.txt) || { echo "$$name: no pin in constraints.txt"; exit 1; }; \
		$(BIN)/pip download -q --no-deps --only-binary=:all: $(GPU_TARGET) -d wheels-gpu "$$pin" \
			|| $(BIN)/pip wheel -q --no-deps "$$pin" -w wheels-gpu || exit 1; \
	done
	$(BIN)/pip wheel -q --no-deps --no-build-isolation . -w wheels-gpu
	@if ls wheels-gpu | grep -v -e '-cp312-' -e '-none-any' -e '-none-manylinux'; then \
		echo "these wheels do not install on CPython 3.12"; exit 1; fi
	@du -sh wheels-gpu
	@echo "on the GPU machine, from the repository root with wheels-gpu/ copied along:"
	@echo "  python3 -m pip install -q --no-index --no-deps --target /tmp/site-packages wheels-gpu/*.whl"
	@echo "  PYTHONPATH=/tmp/site-packages python3 scripts/benchmark_gpu.py --out benchmark_gpu.json"

clean:
	rm -rf $(VENV) $(VENV_TF) .pytest_cache
