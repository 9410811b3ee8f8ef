# gaprune: `make quickstart` installs everything and runs the digits pipeline; `make test` runs the suite.
# Paper tables: `make table-vgg16-cifar10` (GPU-sized) or `make table-vgg16-cifar10 SMOKE=1` (CPU, minutes).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
SHARED ?= ../shared/data
DATA ?= data

SMOKE ?=
SMOKE_ARGS := $(if $(SMOKE),+smoke=cpu,)
TABLES := outputs/tables$(if $(SMOKE),-smoke,)
RUN = $(PY) $(1) $(SMOKE_ARGS) paths.data_dir=$(DATA) hydra.run.dir=$(2)

.PHONY: install quickstart test test-slow clean tables table-quality-cifar10 table-vgg16-cifar10 table-vgg16-cifar100 table-lenet5-mnist table-rd table-ggpa-cifar10

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# the test extras (ONNX export, submitit launcher, Ray, timm) once, on top of the lean install
TEST_STAMP := $(VENV)/.installed-test
$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e ".[dev,export,cluster,ray,timm]"
	touch $(TEST_STAMP)

quickstart: install  ## baseline (trained if missing) -> NSGA-II search -> KD fine-tune -> results table
	$(PY) search.py

test: $(TEST_STAMP)
	$(PY) -m pytest

test-slow: $(TEST_STAMP)  ## the long end-to-end tests the default suite leaves out
	$(PY) -m pytest -m slow

clean:
	rm -rf outputs multirun

# --- data: torchvision formats rebuilt from the offline archives --------------------------------
$(DATA)/cifar-10-batches-py/test_batch:
	@test -f $(SHARED)/prepare.py || { echo "no $(SHARED)/prepare.py: put CIFAR-10 in torchvision format under $(DATA)/ (or set SHARED=)"; exit 2; }
	$(PY) $(SHARED)/prepare.py cifar10 --root $(DATA)

$(DATA)/MNIST/raw/t10k-labels-idx1-ubyte:
	@test -f $(SHARED)/prepare.py || { echo "no $(SHARED)/prepare.py: put MNIST in torchvision format under $(DATA)/ (or set SHARED=)"; exit 2; }
	$(PY) $(SHARED)/prepare.py mnist --root $(DATA)

$(DATA)/cifar-100-python/test:
	@test -f $(SHARED)/cifar100-images.zip || { echo "no CIFAR-100: give prepare.py an archive (python $(SHARED)/prepare.py cifar100 --root $(DATA) --archive <zip>) or put cifar-100-python/ under $(DATA)/"; exit 2; }
	$(PY) $(SHARED)/prepare.py cifar100 --root $(DATA) --archive $(SHARED)/cifar100-images.zip

# --- quality benchmark (issue #10, `python -m benchmarks.quality`, code in benchmarks/quality/): every arm / seed /
# fidelity plan resumable; finished items are committed, so this runs only what is missing (~12 h on a 2-core CPU)
table-quality-cifar10: install $(DATA)/cifar-10-batches-py/test_batch
	benchmarks/quality-cifar10/run.sh a >> benchmarks/quality-cifar10/logs/lane-a.log 2>&1 & \
	benchmarks/quality-cifar10/run.sh b >> benchmarks/quality-cifar10/logs/lane-b.log 2>&1; wait
	benchmarks/quality-cifar10/run.sh c >> benchmarks/quality-cifar10/logs/lane-c.log 2>&1
	benchmarks/quality-cifar10/run.sh report

# --- paper tables: baseline -> GA-MO search + KD fine-tune -> one-shot pruners -> Markdown table ----
table-vgg16-cifar10: install $(DATA)/cifar-10-batches-py/test_batch
	$(call RUN,train.py,$(TABLES)/vgg16-cifar10/train) experiment=vgg16_cifar10
	$(call RUN,search.py,$(TABLES)/vgg16-cifar10/ga-mo) experiment=vgg16_cifar10
	$(call RUN,scripts/oneshot.py,$(TABLES)/vgg16-cifar10/global-taylor-min) experiment=vgg16_cifar10 oneshot=global_taylor oneshot.params.rule=min
	$(PY) scripts/report.py $(TABLES)/vgg16-cifar10 --title "VGG-16 / CIFAR-10 (paper: 93.62 -> 92.49 at -73.0% MACs)" --out $(TABLES)/vgg16-cifar10.md

table-vgg16-cifar100: install $(DATA)/cifar-100-python/test
	$(call RUN,train.py,$(TABLES)/vgg16-cifar100/train) experiment=vgg16_cifar100
	$(call RUN,search.py,$(TABLES)/vgg16-cifar100/ga-mo) experiment=vgg16_cifar100
	$(call RUN,scripts/oneshot.py,$(TABLES)/vgg16-cifar100/global-taylor-min) experiment=vgg16_cifar100 oneshot=global_taylor oneshot.params.rule=min
	$(PY) scripts/report.py $(TABLES)/vgg16-cifar100 --title "VGG-16 / CIFAR-100 (paper: 72.78 -> 71.82 GA-MO at -64.8%, 69.91 global Taylor min at -63.6%)" --out $(TABLES)/vgg16-cifar100.md

table-lenet5-mnist: install $(DATA)/MNIST/raw/t10k-labels-idx1-ubyte
	$(call RUN,train.py,$(TABLES)/lenet5-mnist/train) experiment=lenet5_mnist_weight_mask
	$(call RUN,search.py,$(TABLES)/lenet5-mnist/weight-mask) experiment=lenet5_mnist_weight_mask $(if $(SMOKE),searcher.params.generations=4 searcher.params.population=12 searcher.params.calib_samples=256,)
	$(call RUN,scripts/oneshot.py,$(TABLES)/lenet5-mnist/global-magnitude) experiment=lenet5_mnist_weight_mask oneshot=global_magnitude
	$(PY) scripts/report.py $(TABLES)/lenet5-mnist --title "LeNet-5 / MNIST, unstructured weight-mask GA vs global magnitude" --out $(TABLES)/lenet5-mnist.md

table-rd: install $(DATA)/cifar-10-batches-py/test_batch
	$(call RUN,train.py,$(TABLES)/rd-resnet20-cifar10/train) experiment=rd_resnet20_cifar10
	$(PY) scripts/oneshot.py -m $(SMOKE_ARGS) paths.data_dir=$(DATA) hydra.sweep.dir=$(TABLES)/rd-resnet20-cifar10/oneshot experiment=rd_resnet20_cifar10 oneshot=rate_distortion,lamp,erk,global_magnitude
	$(PY) scripts/report.py $(TABLES)/rd-resnet20-cifar10 --title "ResNet-20 / CIFAR-10 at 90% sparsity: rate-distortion vs LAMP / ERK / global magnitude" --out $(TABLES)/rd-resnet20-cifar10.md

# GGPA grow-and-prune: the depth-20 seed VGG grown, pruned by cumulative BN |gamma| and retrained, against a
# VGG-19 trained with trainer=cifar. SMOKE=1: quarter-width VGG-19, 6-epoch schedule on the smoke subset.
GGPA_CK := checkpoints$(if $(SMOKE),/smoke,)
GGPA_SMOKE := $(if $(SMOKE),trainer.epochs=6 trainer.grow_until=2 trainer.prune_at=4 trainer.score_batches=2,)
table-ggpa-cifar10: install $(DATA)/cifar-10-batches-py/test_batch
	$(call RUN,train.py,$(TABLES)/ggpa-cifar10/vgg19) model=vgg19 dataset=cifar10 trainer=cifar baseline=$(GGPA_CK)/vgg19-cifar10-ggpa-ref.pt $(if $(SMOKE),model.params.width=0.25,)
	$(call RUN,train.py,$(TABLES)/ggpa-cifar10/ggpa) model=vgg_seed dataset=cifar10 trainer=grow_prune baseline=$(GGPA_CK)/vgg_seed-cifar10-ggpa.pt trainer.reference=$(GGPA_CK)/vgg19-cifar10-ggpa-ref.pt $(GGPA_SMOKE)
	$(PY) scripts/report.py $(TABLES)/ggpa-cifar10 --title "GGPA seed VGG vs VGG-19 / CIFAR-10 (paper: 94.02 at 1.48M params / 174.9M FLOPs vs VGG-19 93.66 at 20.04M)" --out $(TABLES)/ggpa-cifar10.md

tables: table-vgg16-cifar10 table-vgg16-cifar100 table-lenet5-mnist table-rd table-ggpa-cifar10
