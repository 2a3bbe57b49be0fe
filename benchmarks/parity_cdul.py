"""Record CDUL's reference numbers (cs-mshah/CDUL reproduction) on tiny data: tests/fixtures/parity/cdul.json.

    python3 benchmarks/parity_cdul.py REF_CHECKOUT [--out tests/fixtures/parity/cdul.json] [--work DIR]

REF_CHECKOUT is a checkout of https://github.com/cs-mshah/CDUL (CDUL has no official code; this
third-party reproduction is what ``cdul_release`` follows). Its modules are imported from the
checkout in this process and run on the tiny symmetric set of ``tests/parity_vlm.py``; nothing of
its code lands in the project. Its ``torchmetrics`` (KLDivergence, the loss and the update's
gradient) must be importable (``pip install --target DIR torchmetrics lightning-utilities``, then
``PYTHONPATH=DIR``).

What runs, from the reproduction's own code: ``CLIPCache._save_global`` and ``_save_aggregate``
(``src/data/data.py``, global view and 3 x 3 tiles, the max/min aggregation) with the
``temperature`` its ``src/clip_cache.py`` passes (``model.logit_scale.data.item()``);
``VOCLabelTransform.final_label`` (``src/data/voc.py``, the initial label); ``Trainer.train``
(``src/train.py``: softmax predictions, KL loss, the in-batch label update) for 4 epochs with the
update after epochs 2 and 4 (``warmup 1``, ``pseudo_update_frequency 2``).

Shims (names replaced in this process; their files are not edited):

* Modules not installed here and not used by the recorded code paths: ``hydra``, ``omegaconf``,
  ``rootutils``, ``wandb``, ``rich``, ``loguru``, ``lovely_tensors`` -> stubs.
* ``clip.load`` / ``clip.tokenize``: the stand-in CLIP of ``tests/parity_vlm.py`` through open_clip
  (the weights spml loads), with OpenAI CLIP's own preprocessing (``Resize(n_px, bicubic),
  CenterCrop(n_px), RGB, ToTensor, Normalize(CLIP statistics)``: the list their
  ``_save_aggregate`` pops two entries from) at n_px 64; its ``logit_scale`` parameter is
  log(100), as OpenAI's.
* The VOC dataset classes: lists of (PIL image, target) of the tiny set (train = spml's train +
  val, as ``protocol: reference``); the targets are the ``{'annotation': {'filename': ...}}``
  their label transform reads.
* ``Trainer.__init__`` (Hydra instantiation) -> the same attributes set directly: the model is a
  torchvision ResNet-18 with a linear ``fc`` (their ResNet-101 downloads ImageNet weights) from
  the seeded weights of ``tests/parity_vlm.py``; ``ResNet101Transforms`` at 64 px (resize 64,
  centre crop 64: the identity on the 64 px images, then ImageNet statistics); batch 24, the
  whole train set, unshuffled (rows in spml's order; one batch, so the order changes no number);
  Adam lr 1e-3; the linear head spml.train builds with seed 0.
* Recording: ``CLIPCache._image_encode`` and ``Trainer.update_pseudo_labels`` wrapped to keep
  their outputs.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import parity_common as pc  # noqa: E402
from parity_vlm import COUNTS, NAMES, NUM_CLASSES, SIZE, checksum, make_backbone, make_clip, make_images  # noqa: E402

EPOCHS = 4
WARMUP, FREQUENCY = 1, 2
LR = 1e-3
SEED = 0


def stub_modules(clip_files: tuple[Path, Path]) -> None:
    """Install the stubs and the CLIP shim into ``sys.modules``."""
    import open_clip
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    def noop(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return None

    class Logger:
        info = warning = error = debug = staticmethod(noop)

    for name in ("hydra", "hydra.utils", "omegaconf", "rootutils", "wandb", "rich", "rich.syntax", "rich.tree",
                 "loguru", "lovely_tensors"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["hydra"].main = lambda **kw: (lambda f: f)
    sys.modules["hydra"].utils = sys.modules["hydra.utils"]
    sys.modules["omegaconf"].DictConfig = dict
    sys.modules["omegaconf"].OmegaConf = object
    sys.modules["rootutils"].setup_root = noop
    sys.modules["loguru"].logger = Logger()
    sys.modules["lovely_tensors"].monkey_patch = noop

    checkpoint, config = clip_files
    open_clip.add_model_config(config)

    class Clip(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = open_clip.create_model("parity-clip", load_weights=False)
            self.inner.load_state_dict(load_file(str(checkpoint)))
            self.inner.eval()
            self.logit_scale = self.inner.logit_scale  # OpenAI CLIP: the log of the scale

        def encode_image(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.encode_image(x)

        def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.inner.encode_text(tokens)

    def convert_rgb(image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    def load(name: str, device: str = "cpu"):  # noqa: ANN202
        preprocess = Compose([
            Resize(SIZE, interpolation=InterpolationMode.BICUBIC), CenterCrop(SIZE), convert_rgb, ToTensor(),
            Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
        ])
        return Clip(), preprocess

    clip = types.ModuleType("clip")
    clip.load = load
    clip.tokenize = open_clip.get_tokenizer("parity-clip")
    sys.modules["clip"] = clip


def main() -> None:
    """Build the inputs, run the reproduction's code paths, write the fixture."""
    args = pc.vlm_command_line(__doc__, "cdul", "cac809f86171f73e0e9c0c48cb6d538143157afb")
    torch.set_num_threads(1)
    data = make_images(args.work, COUNTS, NUM_CLASSES, size=SIZE)
    clip_files = make_clip(args.work / "clip", size=SIZE)
    backbone = make_backbone(args.work / "backbone.safetensors")
    stub_modules(clip_files)
    sys.path.insert(0, str(args.reference))
    from src.data import data as ref_data  # type: ignore[import-not-found]
    from src.data import voc as ref_voc  # type: ignore[import-not-found]
    from src import train as ref_train  # type: ignore[import-not-found]
    from torchmetrics.classification import MultilabelAveragePrecision
    from torchmetrics.regression import KLDivergence
    from torchmetrics.wrappers import ClasswiseWrapper

    rec: dict = {"image_encode": []}
    encode = ref_data.CLIPCache._image_encode

    def recorded_encode(self, image):  # noqa: ANN001, ANN202
        out = encode(self, image)
        rec["image_encode"].append(out.tolist())
        return out

    ref_data.CLIPCache._image_encode = recorded_encode

    names = {s: (data / f"{s}_images.txt").read_text().split() for s in COUNTS}
    labels = {s: np.load(data / f"{s}_labels.npy") for s in COUNTS}
    train_paths = names["train"] + names["val"]
    train_labels = np.concatenate([labels["train"], labels["val"]])
    classes = list(NAMES[:NUM_CLASSES])

    def target(path: str) -> dict:
        return {"annotation": {"filename": Path(path).name}}

    class Listed(torch.utils.data.Dataset):
        def __init__(self, paths, transform=None, target_transform=None) -> None:  # noqa: ANN001
            self.images, self.transform, self.target_transform = paths, transform, target_transform

        def __len__(self) -> int:
            return len(self.images)

        def __getitem__(self, i: int):  # noqa: ANN204
            image = Image.open(self.images[i]).convert("RGB")
            x = self.transform(image) if self.transform else image
            t = target(self.images[i])
            return x, (self.target_transform(t) if self.target_transform else t)

    cache = args.work / "cache"
    dirs = {k: str(cache / k) for k in ("global", "alpha_beta", "aggregate", "pseudo")}
    clip_model, preprocess = sys.modules["clip"].load("parity-clip")
    temperature = float(clip_model.logit_scale.data.item())  # src/clip_cache.py main()
    filename = ref_voc.VOCLabelTransform(transform_type="filename")
    global_cache = ref_data.CLIPCache(Listed(train_paths, preprocess, filename), classes, dirs["global"], dirs["alpha_beta"],
                                      dirs["aggregate"], thresh=0, temperature=temperature, batch_size=64, num_workers=0,
                                      device="cpu")
    global_cache.save(mode="global")
    n = len(train_paths)
    rec["global_probs"] = rec.pop("image_encode")[0]
    rec["image_encode"] = []
    tiles = ref_data.TileCropDataset(Listed(train_paths, None, filename), num_tiles=(3, 3))
    aggregate_cache = ref_data.CLIPCache(tiles, classes, dirs["global"], dirs["alpha_beta"], dirs["aggregate"], thresh=0,
                                         temperature=temperature, batch_size=64, num_workers=0, device="cpu")
    aggregate_cache.save(mode="aggregate")
    rec["tile_probs"] = rec.pop("image_encode")
    label_transform = ref_voc.VOCLabelTransform(transform_type="final", global_cache_dir=dirs["global"],
                                                aggregate_cache_dir=dirs["aggregate"], final_lambda=0.0)
    rec["aggregate"] = [torch.load(Path(dirs["aggregate"]) / (Path(p).stem + ".pt")).tolist() for p in train_paths]
    rec["initial_labels"] = [label_transform(target(p)).tolist() for p in train_paths]

    # Training: their Trainer with __init__'s attributes set directly.
    onehot = {Path(p).name: torch.from_numpy(row.astype(np.int64)) for p, row in zip(train_paths, train_labels)}
    train_transform = ref_data.ResNet101Transforms(resize_size=SIZE, crop_size=SIZE)
    trainer = ref_train.Trainer.__new__(ref_train.Trainer)
    pseudo_transform = ref_voc.VOCLabelTransform(transform_type="final", global_cache_dir=dirs["global"],
                                                 aggregate_cache_dir=dirs["aggregate"], pseudo_cache_dir=dirs["pseudo"])
    Path(dirs["pseudo"]).mkdir(parents=True)

    def train_target(t: dict):  # noqa: ANN202  (their 'filename_final_onehot' target transform)
        name = t["annotation"]["filename"]
        return name, pseudo_transform.final_label(t), onehot[name]

    import torchvision

    from spml.models import create_classifier

    model = torchvision.models.resnet18(weights=None)
    model.fc = torch.nn.Linear(512, NUM_CLASSES)
    model.load_state_dict(load_file(str(backbone)), strict=False)
    torch.manual_seed(SEED)  # the head spml.train builds with seed 0
    head = create_classifier("resnet18", str(backbone), NUM_CLASSES, head="linear").head.fc
    model.fc.load_state_dict(head.state_dict())
    rec["initial_fc"] = checksum(model.fc.state_dict())
    trainer.cfg = types.SimpleNamespace(train=types.SimpleNamespace(sigma=1.0),
                                        clip_cache=types.SimpleNamespace(pseudo_cache_dir=dirs["pseudo"]))
    trainer.sigma, trainer.device = 1.0, "cpu"
    trainer.train_dataloader = torch.utils.data.DataLoader(Listed(train_paths, train_transform, train_target), batch_size=n,
                                                           shuffle=False, num_workers=0)
    trainer.model = model
    trainer.optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    trainer.train_metric = ClasswiseWrapper(MultilabelAveragePrecision(num_labels=NUM_CLASSES, average=None), labels=classes)
    trainer.pseudo_metric = ClasswiseWrapper(MultilabelAveragePrecision(num_labels=NUM_CLASSES, average=None), labels=classes)
    trainer.warmup, trainer.pseudo_update_frequency = WARMUP, FREQUENCY
    trainer.loss = KLDivergence()

    steps: list[dict] = []
    forward = model.forward

    def recorded_forward(x):  # noqa: ANN001, ANN202
        out = forward(x)
        steps.append({"logits": out.detach().tolist()})
        return out

    model.forward = recorded_forward
    update = ref_train.Trainer.update_pseudo_labels

    def recorded_update(self, filenames, pseudo_labels):  # noqa: ANN001, ANN202
        steps[-1]["updated"] = {"names": list(filenames), "labels": pseudo_labels.tolist()}
        return update(self, filenames, pseudo_labels)

    ref_train.Trainer.update_pseudo_labels = recorded_update
    epochs = []
    for epoch in range(EPOCHS):
        first = len(steps)
        loss_values: list[float] = []
        kl_call = trainer.loss.forward

        def recorded_kl(p, q, _calls=loss_values):  # noqa: ANN001, ANN202
            value = kl_call(p, q)
            _calls.append(float(value))
            return value

        trainer.loss.forward = recorded_kl
        total, train_map, pseudo_map = trainer.train(epoch)
        trainer.loss.forward = kl_call
        trainer.loss.reset()
        trainer.train_metric.reset()
        trainer.pseudo_metric.reset()
        w = model.fc.weight.detach().double()
        epochs.append({"epoch": epoch + 1, "kl_calls": loss_values, "total_loss": total, "train_map": train_map,
                       "pseudo_map": pseudo_map, "fc_weight_norm": float(w.norm()), "fc_weight_first": w.flatten()[:8].tolist(),
                       "fc_bias": model.fc.bias.detach().double().tolist(), "steps": steps[first:]})
    rec["epochs"] = epochs
    rec["names"] = [Path(p).name for p in train_paths]
    out = {
        "header": {
            "reference": "https://github.com/cs-mshah/CDUL",
            "commit": args.commit,
            "command": "in-process: CLIPCache.save('global'|'aggregate'), VOCLabelTransform.final_label, "
                       f"Trainer.train(epoch) for epoch in range({EPOCHS}) with warmup {WARMUP}, pseudo_update_frequency {FREQUENCY}",
            "recorded_by": "python3 benchmarks/parity_cdul.py REF_CHECKOUT",
            "shims": [line.strip("* ").replace("\n", " ") for line in __doc__.split("Shims")[1].split("\n* ")[1:]],
            "inputs": {"num_classes": NUM_CLASSES, "size": SIZE, "counts": COUNTS, "epochs": EPOCHS, "lr": LR,
                       "warmup": WARMUP, "frequency": FREQUENCY, "temperature": temperature,
                       "backbone": checksum(load_file(str(backbone))), "clip": checksum(load_file(str(clip_files[0])))},
        },
        **rec,
    }
    print(f"wrote {pc.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
