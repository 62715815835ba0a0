# NSynth instrument-family CNNs. `make help` lists the targets; variables can be set on the command line,
# e.g. `make train DATA=/path/to/corpus EPOCHS=5`.
PYTHON ?= python
# Debian packages the tests need (a SoundFont for the corpus test, Chromium for the web-page test, freepats +
# TiMidity++ for the freepats yardstick's test); .ci/run installs the same list. The full corpus also renders
# fluid-soundfont-gm, musescore-general-soundfont, fluidr3mono-gm-soundfont, opl3-soundfont and csound-soundfont:
# `make soundfonts`.
APT_PACKAGES = make timgm6mb-soundfont chromium freepats timidity
APT_EXTRA ?=
# Training data: a folder with train/ and valid/ NSynth splits (TFRecords or JSON+wav), e.g. the output of
# `python -m nsynth_cnn.tools corpus --out corpus`, or TRAIN_DATA=.../nsynth-train.tfrecord VALID_DATA=... for NSynth.
DATA ?= corpus
TRAIN_DATA ?= $(DATA)/train
VALID_DATA ?= $(DATA)/valid
EVAL_DATA ?= data/nsynth-sample
WEIGHTS ?= weights
EPOCHS ?=
MODEL ?= both

.PHONY: help setup setup-user setup-gpu test train train-gpu evaluate
help:  ## list the targets
	@grep -E '^[a-z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup:  ## developer machine, as root: Debian packages the tests need + the tested lock CI installs (+ tinysoundfont)
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(APT_PACKAGES) $(APT_EXTRA)
	$(PYTHON) -m pip install -r .ci/requirements-lock.txt
	$(PYTHON) -m pip install --no-deps -e .
	$(PYTHON) -m pip install --no-deps tinysoundfont==0.3.7

setup-user:  ## no root: the runtime requirements (ranges; an installed TensorFlow is kept) + the package, dev extras
	$(PYTHON) -m pip install -r requirements.txt
	$(PYTHON) -m pip install -e ".[dev]"

test:  ## the test suite (the command README.md and .ci/run use)
	$(PYTHON) -m pytest -q

TRAIN_ARGS ?=
TRAIN_OUT ?= runs/weights
train:  ## the shipped recipe (params.RECIPE) on $(TRAIN_DATA), early stopping on $(VALID_DATA); writes $(TRAIN_OUT)/*_cnn.keras
	$(PYTHON) -m nsynth_cnn train --train $(TRAIN_DATA) --valid $(VALID_DATA) --out $(TRAIN_OUT) $(if $(EPOCHS),--epochs $(EPOCHS)) $(TRAIN_ARGS)

setup-gpu:  ## CUDA machine, no root: TensorFlow's CUDA build (tensorflow[and-cuda], same range) + the runtime requirements
	$(PYTHON) -m pip install "$$(sed -n 's/^tensorflow\([<>=]\)/tensorflow[and-cuda]\1/p' requirements.txt | cut -d' ' -f1)" -r requirements.txt

train-gpu:  ## `make train` after checking that TensorFlow sees a GPU (mixed precision is then automatic)
	$(PYTHON) -c "import sys; from nsynth_cnn.train import has_gpu; sys.exit(0 if has_gpu() else 'no GPU visible to TensorFlow: run make setup-gpu on a CUDA machine')"
	$(MAKE) train

evaluate:  ## accuracy + confusion matrix of $(WEIGHTS) on $(EVAL_DATA); JSON in runs/
	mkdir -p runs
	$(PYTHON) -m nsynth_cnn evaluate --model $(MODEL) --data $(EVAL_DATA) --weights $(WEIGHTS) --out runs/evaluation_$(MODEL).json

# ---- developer tools (nsynth_cnn/tools): web page, corpus, yardsticks, benchmark
# web page (nsynth_cnn/tools/serve): upload a recording or pick a sample note, see both networks' answers
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8000
.PHONY: serve
serve:  ## local web page on http://$(SERVE_HOST):$(SERVE_PORT)/ using weights/*.keras and data/nsynth-sample
	$(PYTHON) -m nsynth_cnn.tools serve --host $(SERVE_HOST) --port $(SERVE_PORT) --weights weights --sample data/nsynth-sample

# ---- corpus and shipped weights (issue: NSynth-format corpus from real instrument samples)
CORPUS ?= corpus
SOUNDFONT_PACKAGES = fluid-soundfont-gm musescore-general-soundfont timgm6mb-soundfont csound-soundfont \
	fluidr3mono-gm-soundfont opl3-soundfont freepats timidity
.PHONY: soundfonts recordings evaluate-recordings evaluate-freepats corpus sample weights
soundfonts:  ## install the six Debian SoundFont packages the corpus renders, and freepats + TiMidity++ (needs root)
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SOUNDFONT_PACKAGES)

recordings:  ## fetch the 20 tonejs-instruments recording sets (npm, MIT) into sources/tonejs/ (corpus --samples)
	$(PYTHON) -c "from nsynth_cnn.tools import corpus; print(len(corpus.fetch_tonejs()), 'folders in', corpus.TONEJS_DIR)"

TONEJS_EVAL ?= corpus-tonejs-eval
evaluate-recordings: recordings  ## both shipped networks on the tonejs recordings (20 real instruments, 411 notes; none in their training data)
	$(PYTHON) -m nsynth_cnn.tools corpus --out $(TONEJS_EVAL) --soundfonts --samples sources/tonejs --synth-instruments 0 \
	  --bank-variations off --notes-per-instrument 16 --seed 0 --layouts tfrecord
	$(PYTHON) -m nsynth_cnn evaluate --model both --data '$(TONEJS_EVAL)/*/*.tfrecord' --weights weights \
	  --out weights/evaluation_tonejs.json

FREEPATS_EVAL ?= corpus-freepats-eval
evaluate-freepats:  ## both shipped networks on Debian's freepats GUS patches (59 GM programs, 944 notes; none in their training data)
	$(PYTHON) -m nsynth_cnn.tools corpus --out $(FREEPATS_EVAL) --soundfonts --samples --synth-instruments 0 \
	  --bank-variations off --freepats on --notes-per-instrument 16 --seed 0 --layouts tfrecord
	$(PYTHON) -m nsynth_cnn evaluate --model both --data '$(FREEPATS_EVAL)/*/*.tfrecord' --weights weights \
	  --out weights/evaluation_freepats.json

CORPUS_ARGS ?=
corpus:  ## render the NSynth-format corpus into $(CORPUS)/ (Debian SoundFonts + ../shared banks and recordings)
	$(PYTHON) -m nsynth_cnn.tools corpus --out $(CORPUS) --notes-per-instrument 16 --seed 0 $(CORPUS_ARGS)

sample:  ## rebuild data/nsynth-sample (10 notes per family from the corpus test split, MIT SoundFonts only)
	rm -rf data/nsynth-sample
	$(PYTHON) -c "from nsynth_cnn.tools import corpus; print(corpus.embedded_sample('$(CORPUS)', 'data/nsynth-sample'))"

WATCH = $(if $(wildcard ../shared/nsynth-real),--watch ../shared/nsynth-real,)
weights:  ## the shipped weights: `make train` on $(CORPUS) into weights/ (the recipe, seed 1234), then their evaluations
	$(MAKE) train TRAIN_DATA=$(CORPUS)/train VALID_DATA=$(CORPUS)/valid TRAIN_OUT=weights EPOCHS= TRAIN_ARGS="$(WATCH)"
	$(PYTHON) -m nsynth_cnn evaluate --data $(CORPUS)/test --weights weights --out weights/evaluation_corpus_test.json
	if [ -d ../shared/nsynth-real ]; then $(PYTHON) -m nsynth_cnn evaluate --data ../shared/nsynth-real --weights weights --out weights/evaluation_real_nsynth.json; fi

# ---- report: project1.ipynb (run in place), its HTML/PDF export, and the deliverable project1.zip
.PHONY: notebook report zip
notebook:  ## run project1.ipynb top to bottom in place (MODE="evaluate" on data/); writes figures/*.png
	$(PYTHON) -m jupyter nbconvert --to notebook --execute --inplace --ExecutePreprocessor.timeout=1800 project1.ipynb

report:  ## the executed notebook as report/project1.html (outputs only, alt text) and report/project1.pdf (via Chromium)
	$(PYTHON) -c "from nsynth_cnn.export import export_html; print('wrote', export_html('project1.ipynb', 'report/project1.html'))"
	@if command -v chromium >/dev/null 2>&1; then \
	  chromium --headless --no-sandbox --disable-gpu --no-pdf-header-footer --virtual-time-budget=10000 \
	    --print-to-pdf=report/project1.pdf report/project1.html 2>/dev/null && echo "wrote report/project1.pdf"; \
	else echo "chromium not found: PDF skipped (the HTML is complete)"; fi

zip:  ## project1.zip: executed notebook, weights/, nsynth_cnn/, requirements.txt, README.md, data sample, figures
	$(PYTHON) -c "from nsynth_cnn.export import package_zip; print(len(package_zip('project1.zip')), 'files in project1.zip')"

# ---- speed and memory (nsynth_cnn/tools/bench.py): side-by-side ratios on generated notes; docs/performance.md
BENCH_NOTES ?= 2048
BENCH_ARGS ?=
.PHONY: bench
bench:  ## speed + memory benchmark on $(BENCH_NOTES) generated notes (BENCH_ARGS="--only scale" etc.); JSON in runs/
	mkdir -p runs
	$(PYTHON) -m nsynth_cnn.tools bench --notes $(BENCH_NOTES) --json runs/bench.json $(BENCH_ARGS)
