"""Record AEVLP's reference trajectory (Fsoft-AIC/AEVLP ``train.run_train``) on spml's tiny data.

The numbers go to ``tests/fixtures/parity/aevlp.json``; ``tests/test_parity_aevlp.py`` reproduces
them with ``spml.train`` and the shipped ``gpr_coco`` config.

    git --git-dir=/work/.mirror/Fsoft-AIC+AEVLP/repo archive HEAD | tar -x -C /tmp/ref-aevlp
    OMP_NUM_THREADS=1 python3 benchmarks/parity_aevlp.py /tmp/ref-aevlp [--commit SHA]

The release's config is its own ``configs/coco.json`` (``get_configs`` with ``--dataset coco
--use_config_file True``, as ``scripts/train_coco.sh``). Shims (in memory; the checkout is not
edited), besides those of ``parity_refloop``:

* ``munch`` (not installed here) is a dict with attribute access and ``vars()``, as the release uses it;
* from ``configs/coco.json``: ``num_epochs`` 3, then the keys of the tiny run: ``use_pretrained``
  false, ``num_workers`` 0, ``num_classes`` 4, ``save_path`` a temporary folder;
* ``transformers`` (imported, never used by this path) is an empty stand-in module;
* the pseudo-label generator (``models.PseudoLabelGeneratorOpenAI``: OpenAI's ViT-B/16, its frozen
  prompt learner and its frozen random GCN) is a stand-in whose ``generate`` returns the cosine
  similarities of the untrained micro CLIP of ``parity_tiny.build_clip`` between each view and the
  prompts "a photo of a {name}." (the prompt learner's text, ``ctx_init`` + name + "."); the GCN is
  left out on both sides (spml omits it, docs/aevlp.md);
* the CLIP views' flips (``tx['pl']``, drawn independently for the global view and each tile) are
  spml's (``spml.pseudolabels.aevlp.draw_flips`` of the config's seed and the epoch);
* ``models.ImageClassifier`` loads spml's initial weights after it is built;
* ``torch.load`` of the release's own best-weights file with ``weights_only=False``.

Recorded: the loss of every step (``losses.GPR_loss``), the pseudo-labels of every step
(``get_pseudo_labels``'s second output, the one the loss reads) with their rows, the tracked weights
after every step, val mAP per epoch and test mAP (``train.compute_metrics``, percent), the selected
epoch.
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

import parity_common as pc
import parity_refloop as ref
import spml
from spml.data.layout import PreparedData
from spml.pseudolabels.aevlp import draw_flips

METHOD, CONFIG, EPOCHS, BATCH, SEED, GRID = "aevlp", "gpr_coco", 3, 16, 1200, 4
OVERRIDES = {"epochs": EPOCHS, "image_size": ref.parity_tiny.SIZE, "pretrained": "none", "device": "cpu"}
NAMES = {"head.fc.weight": "linear_classifier.weight", "backbone.conv1.weight": "feature_extractor.0.weight"}


class AevlpOrder(ref.SpmlOrder):
    """spml's batches and train flips, and each epoch's CLIP-view flips.

    The view flips are queued in the order the release's dataset transforms the views (per item:
    the global view, then the tiles row-major).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        """As :class:`SpmlOrder`; ``views.flips`` is the CLIP views' queue."""
        super().__init__(n, batch_size, seed)
        self.views = types.SimpleNamespace(flips=[])

    def __iter__(self) -> Any:
        """The epoch's rows; queue their view flips."""
        rows = list(super().__iter__())
        drawn = draw_flips(self.seed, self.epoch, self.n, GRID * GRID)
        self.views.flips = [bool(f) for r in rows for f in drawn[r]][::-1]
        return iter(rows)


class GeneratorStandIn(torch.nn.Module):
    """``PseudoLabelGeneratorOpenAI``'s ``generate``: view x prompt cosine similarities."""

    def __init__(self, vlm: Any, prompts: list[str]) -> None:
        """The stand-in CLIP and the prompts' text embeddings."""
        super().__init__()
        self.model = vlm.model
        with torch.no_grad():
            self.text = torch.nn.functional.normalize(vlm.model.encode_text(vlm.tokenizer(prompts)), dim=-1)

    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """Cosine similarities of the views ``x`` with every class prompt."""
        with torch.no_grad():
            return torch.nn.functional.normalize(self.model.encode_image(x), dim=-1) @ self.text.t()


def record(checkout: Path, commit: str) -> Path:
    """Run the release on the tiny data; write the fixture."""
    work, data_dir, clip, start, folder = ref.prepare(METHOD, CONFIG, OVERRIDES, clip=True)
    vlm = spml.load_vlm(clip["method_params.vlm"], checkpoint=clip["method_params.vlm_checkpoint"],
                        model_config=clip["method_params.vlm_model_config"])
    prompts = [f"a photo of a {name}." for name in PreparedData.open(data_dir).classes]

    ref.shim_munch()
    ref.shim_torch_load()
    transformers = types.ModuleType("transformers")
    for name in ("CLIPProcessor", "CLIPVisionModel", "CLIPVisionModelWithProjection", "AutoTokenizer",
                 "CLIPTextModelWithProjection"):
        setattr(transformers, name, None)
    sys.modules["transformers"] = transformers
    mods = ref.import_release(checkout, ["config", "datasets", "models", "losses", "train", "utils"])
    n_train = len(ref.reference_split(ref.parity_tiny.POOL)[0])
    order = AevlpOrder(n_train, BATCH, seed=SEED)
    ref.patch_metadata(mods["datasets"], folder, ref.parity_tiny.CLASSES)
    ref.patch_transforms(mods["datasets"], {"train": order, "pl": order.views}, ref.parity_tiny.SIZE)
    ref.patch_dataloader(order)
    mods["models"].PseudoLabelGeneratorOpenAI = lambda P: GeneratorStandIn(vlm, prompts)  # noqa: N803
    tracker = ref.StepTracker(NAMES)

    ref.start_cole_classifier(mods["models"].ImageClassifier, start, tracker)
    losses: list[float] = []
    pc.wrap(mods["losses"], "GPR_loss", lambda out, *a, **k: losses.append(float(out.detach())))
    pseudo: list[list] = []
    rows: list[list[int]] = []

    def on_pseudo(out: tuple, *args: Any) -> None:
        pseudo.append(out[1].numpy().astype(int).tolist())

    pc.wrap(mods["train"], "get_pseudo_labels", on_pseudo)
    maps: list[float] = []
    pc.wrap(mods["train"], "compute_metrics", lambda out, *a, **k: maps.append(float(out["map"])))

    sys.argv = ["main.py", "--dataset", "coco", "--use_config_file", "True"]
    (work / "configs").symlink_to(checkout / "configs")  # read relative to the working folder
    cwd = os.getcwd()
    os.chdir(work)
    try:
        P = mods["config"].get_configs()  # noqa: N806
    finally:
        os.chdir(cwd)
    if (P["bsize"], P["seed"], P["grid_size"]) != (BATCH, SEED, GRID):
        raise ValueError(f"configs/coco.json has batch {P['bsize']}, seed {P['seed']}, grid {P['grid_size']}")
    (work / "runs").mkdir()
    P.update(num_epochs=EPOCHS, use_pretrained=False, num_workers=0, num_classes=ref.parity_tiny.CLASSES,
             save_path=str(work / "runs"))
    mods["train"].run_train(P)
    per_epoch = len(order) // BATCH
    for epoch in range(1, len(pseudo) // per_epoch + 1):
        perm = np.random.default_rng([SEED, epoch]).permutation(n_train)[: len(order)]
        rows += [perm[b * BATCH : (b + 1) * BATCH].tolist() for b in range(per_epoch)]

    val_map, test_map = maps[:-1], maps[-1]
    best = max(range(len(val_map)), key=lambda i: (val_map[i], -i)) + 1
    header = {
        "reference": "Fsoft-AIC/AEVLP",
        "commit": commit,
        "command": f"python3 benchmarks/parity_aevlp.py CHECKOUT (train.run_train, configs/coco.json, {EPOCHS} epochs)",
        "spml": {"config": CONFIG, "overrides": OVERRIDES, "clip": "parity_tiny.clip_overrides"},
        "shims": __doc__.split("Shims")[1].split("Recorded")[0].strip() + " See benchmarks/parity_refloop.py.",
    }
    return ref.write_fixture(METHOD, header, start, {
        "step_loss": losses, "step_weights": tracker.weights, "order": rows, "step_pseudo": pseudo,
        "val_map": val_map, "best_epoch": best, "test_map": test_map,
    })


if __name__ == "__main__":
    ref.main(__doc__, "Fsoft-AIC/AEVLP", record)
