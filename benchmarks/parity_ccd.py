"""Record CCD's reference trajectory (k0u-id/CCD) on tiny data: tests/fixtures/parity/ccd.json.

    python3 benchmarks/parity_ccd.py REF_CHECKOUT [--out tests/fixtures/parity/ccd.json] [--work DIR] [--commit SHA]

REF_CHECKOUT is a checkout of https://github.com/k0u-id/CCD (e.g. ``git --git-dir=MIRROR archive HEAD
| tar -x -C /tmp/ccd``). The script copies it to a scratch folder, applies the shims below (never to
the checkout itself), runs its ``main_multi.py`` with the run script's (``train_gpu#0.sh``)
arguments scaled to the tiny set, and writes the numbers the run produced. Nothing of the
reference's code lands in the project; the test (tests/test_parity_ccd.py) runs spml on the same
inputs (tests/parity_vlm.py) and compares.

Shims (each a literal replacement; the script stops if one no longer matches):

* ``clip.load`` / ``clip.tokenize``: the stand-in CLIP of ``tests/parity_vlm.py`` through open_clip
  (the same weights spml loads). ``encode_image(image, h, w)`` receives the squashed frame (64 x 64,
  the CLIP's own size) or a crop; a crop is squashed to 64 x 64 bilinearly (the released CLIP takes
  any size; open_clip's ViT does not).
* The class list ``pascal_classes``: the tiny set's names; ``num_classes`` of ``voc12``: 5.
* ``munch.Munch`` -> a dict subclass (munch is not installed here); ``main_multi.py`` no longer
  imports ``test.py`` (unused: its ``run_test`` call is commented out; it imports the real CLIP);
  ``imutils.py``'s ``cv2`` (OpenCV, not installed; used only by its drawing helpers) -> a stub.
* ``.cuda()`` -> CPU; ``num_workers`` 0; metadata and image paths -> the scratch folder.
* ``resize`` (640, 640) -> (64, 64) and the crop's longer side 640 -> 64 (the frame is the image).
* The backbone: torchvision ResNet-18 (``--arch resnet18``, feat_dim 512 in its lookup table)
  with the seeded weights of ``tests/parity_vlm.py``; the 1x1 classifier from spml's seeded head
  (the weights spml.train starts from with ``seed: 0``).
* The strong view's colour jitter at strength 0 (the identity): the jitter draws from torch's
  global RNG on each side differently, so the consistency target would differ by chance.
* Recording: lines that append numbers to a dict written as JSON at the end.

The data: 16 train + 8 val images are the reference's official train set (spml ``protocol:
reference`` trains on train + val), the 8 test images its val = test set. Batch 24 = the whole
train set (one step an epoch: the data order cannot differ), lr 1e-3 (1e-5 moves a random network
too little in 6 steps to tell a wrong trajectory from a right one), 6 epochs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import parity_common as pc  # noqa: E402
from parity_vlm import COUNTS, NAMES, NUM_CLASSES, SIZE, checksum, make_backbone, make_clip, make_images  # noqa: E402

EPOCHS = 6
LR = 1e-3
OFFSET = 8  # the run script's 80 px in a 640 frame, in the 64 px frame
ARGS = [
    "--dataset", "voc12", "--bsize", "24", "--lr", str(LR), "--num_epochs", str(EPOCHS),
    "--offset_size", str(OFFSET), "--coeff", "3", "--loss_coeff", "1", "--ratio", "0.2",
    "--box_offset", str(OFFSET), "--topk", "1", "--LS", "True", "--LS_coeff", "20", "--bound", "4",
    "--arch", "resnet18", "--train_resize", f"{SIZE},{SIZE}",
]

CLIP_SHIM = '''
import math
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

CONFIG = {config!r}
CHECKPOINT = {checkpoint!r}
SIZE = {size}


class _Clip:
    def __init__(self):
        open_clip.add_model_config(CONFIG)
        self.model = open_clip.create_model("parity-clip", load_weights=False)
        self.model.load_state_dict(load_file(CHECKPOINT))
        self.model.eval()

    def encode_image(self, image, h=None, w=None):
        if image.shape[-2:] != (SIZE, SIZE):
            image = F.interpolate(image, (SIZE, SIZE), mode="bilinear", align_corners=False)
        return self.model.encode_image(image)

    def encode_text(self, tokens):
        return self.model.encode_text(tokens)


def load(path, device="cpu"):
    return _Clip(), None


def tokenize(texts):
    return open_clip.get_tokenizer("parity-clip")(texts)
'''

REC_SHIM = '''
import json
import os
import numpy as np
import torch

REC = {"steps": [], "epochs": []}


def val(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def weights(model):
    w = model.onebyone_conv.weight.detach().double()
    return {"head_weight_norm": float(w.norm()), "head_weight_00": float(w.flatten()[0]),
            "head_weight_first": w.flatten()[:8].tolist(), "head_bias": val(model.onebyone_conv.bias),
            "backbone_norm": float(sum(p.detach().double().pow(2).sum() for p in model.feature_extractor.parameters()) ** 0.5)}


def dump():
    with open(os.environ["PARITY_OUT"], "w") as f:
        json.dump(REC, f)
'''


def replace(path: Path, old: str, new: str, count: int = 1) -> None:
    """Replace ``old`` by ``new`` in ``path``; stop if ``old`` does not occur exactly ``count`` times."""
    text = path.read_text()
    found = text.count(old)
    if found != count:
        raise SystemExit(f"shim no longer matches {path.name}: {old!r} found {found} times, expected {count}")
    path.write_text(text.replace(old, new))


def shim(ref: Path, work: Path, clip: tuple[Path, Path], init: Path) -> None:
    """Apply the module docstring's shims to the scratch copy ``ref``."""
    (ref / "parity_clip.py").write_text(CLIP_SHIM.format(config=str(clip[1]), checkpoint=str(clip[0]), size=SIZE))
    (ref / "parity_rec.py").write_text(REC_SHIM)
    cfg = ref / "config.py"
    replace(cfg, "from munch import Munch as mch", "class mch(dict):\n    __getattr__ = dict.__getitem__")
    replace(ref / "main_multi.py", "from test import run_test\n", "")
    replace(ref / "imutils.py", "import cv2\n", "import types\ncv2 = types.SimpleNamespace(COLORMAP_JET=2)\n")
    replace(cfg, "'voc12': 20,", f"'voc12': {NUM_CLASSES},")
    replace(cfg, "args.num_workers = 4", "args.num_workers = 0")
    replace(cfg, "args.resize = (640, 640)", f"args.resize = ({SIZE}, {SIZE})")
    replace(cfg, "args.save_path = './results'", f"args.save_path = {str(work / 'results')!r}")
    ds = ref / "datasets.py"
    replace(ds, "'path_to_dataset': './metadata/voc12',", f"'path_to_dataset': {str(work / 'metadata')!r},")
    replace(ds, "'path_to_images': '/data/data/VOC2012/JPEGImages'", f"'path_to_images': {str(work / 'images')!r}")
    replace(ds, "transforms.ColorJitter(brightness=0.5, contrast=0.5, saturation=0.5, hue=0.5)",
            "transforms.ColorJitter(brightness=0, contrast=0, saturation=0, hue=0)")
    models = ref / "models.py"
    replace(models, "feature_extractor = torchvision.models.resnet50(pretrained=P['use_pretrained'])",
            "feature_extractor = torchvision.models.resnet18(weights=None)\n"
            "        from safetensors.torch import load_file\n"
            f"        feature_extractor.load_state_dict(load_file({str(init / 'backbone.safetensors')!r}), strict=False)")
    replace(models, "self.onebyone_conv = nn.Conv2d(P['feat_dim'], P['num_classes'], 1)",
            "self.onebyone_conv = nn.Conv2d(P['feat_dim'], P['num_classes'], 1)\n"
            f"        head = load_file({str(init / 'head.safetensors')!r})\n"
            "        self.onebyone_conv.weight.data.copy_(head['weight'].view_as(self.onebyone_conv.weight))\n"
            "        self.onebyone_conv.bias.data.copy_(head['bias'])")
    tr = ref / "train.py"
    replace(tr, "import clip\n", "import parity_clip as clip\nfrom parity_rec import REC, val, weights, dump\n")
    replace(tr, "pascal_classes = [\"aeroplane\"", f"pascal_classes = {list(NAMES[:NUM_CLASSES])!r}\n_unused = [\"aeroplane\"")
    replace(tr, "scale = 640 / cropx", f"scale = {SIZE} / cropx")
    replace(tr, "scale = 640 / cropy", f"scale = {SIZE} / cropy")
    text = tr.read_text().replace(".cuda()", "")
    tr.write_text(text)
    # recording
    replace(tr, "                        table_fixedclip.append(tempscore)",
            "                        REC.setdefault('global_similarity', []).append(val(global_similarity[0] / 100.0))\n"
            "                        table_fixedclip.append(tempscore)")
    replace(tr, "                            if P['LS']:\n                                temp_label = torch.where(temp_label >= LS_coeff,",
            "                            REC.setdefault('update', []).append({'id': id[0], 'preds': val(preds_), 'classes': val(cls_indices.flatten()), "
            "'local_raw': val(temp_label[0])})\n"
            "                            if P['LS']:\n                                temp_label = torch.where(temp_label >= LS_coeff,")
    replace(tr, "                                temp_label = torch.cat((temp_label, crop_softscore), dim=0)",
            "                                temp_label = torch.cat((temp_label, crop_softscore), dim=0)\n"
            "                                REC.setdefault('views', []).append({'id': id[0], 'class': cls_idx.item(), 'box': list(crop_box), "
            "'first': [int(BOX1_W), int(BOX1_H)], 'last': [int(BOX2_W), int(BOX2_H)], 'scores': val(crop_softscore[0]), "
            "'cam': val(CAM[0, cls_idx.item()])})")
    replace(tr, "            if coeff > 0:\n",
            "            REC['names'] = list(table_name)\n"
            "            REC['clip_bias'] = val(clip_bias)\n"
            "            REC['confident'] = val(table_flag)\n"
            "            REC['initial_labels'] = [val(t[0]) for t in table_pseudolabel]\n"
            "            if coeff > 0:\n")
    replace(tr, "        if epoch == 2:\n            logger.info(f'max above thres",
            "        if epoch == 2:\n            REC['multiplier'] = multiplier\n"
            "            REC['updated_labels'] = [val(t[0]) for t in table_pseudolabel]\n"
            "            logger.info(f'max above thres")
    replace(tr, "                        loss.backward()\n",
            "                        REC['steps'].append({'epoch': epoch, 'loss': loss.item(), 'batch': len(id)})\n"
            "                        loss.backward()\n")
    replace(tr, "        map_train = metrics_train['map']\n",
            "        map_train = metrics_train['map']\n"
            "        REC['epochs'].append({'epoch': epoch, 'train_map': metrics_train['map'], 'test_map': metrics['map'], "
            "'test_ap': val(metrics['ap']), 'test_pred': _test_pred, **weights(model)})\n")
    replace(tr, "        metrics = compute_metrics(y_pred, y_true)\n",
            "        metrics = compute_metrics(y_pred, y_true)\n        _test_pred = val(y_pred)\n")
    replace(tr, "    logger.info('Training procedure completed!')\n",
            "    REC['best'] = {'epoch': bestmap_epoch, 'test_map': bestmap_val}\n"
            "    REC['ccd_stop'] = {'epoch': bestccd_epoch, 'test_map': bestccd_map}\n"
            "    dump()\n"
            "    logger.info('Training procedure completed!')\n")


def spml_head(data: Path, backbone: Path, init: Path) -> dict:
    """The head spml.train builds with seed 0 (saved for the reference's 1x1 classifier)."""
    from spml.models import create_classifier

    torch.manual_seed(0)
    model = create_classifier("resnet18", str(backbone), NUM_CLASSES, head="linear", boost=3.0)
    head = {"weight": model.head.fc.weight.detach().clone(), "bias": model.head.fc.bias.detach().clone()}
    save_file(head, str(init / "head.safetensors"))
    return checksum(head)


def main() -> None:
    """Build the inputs, run the shimmed reference, write the fixture."""
    args = pc.vlm_command_line(__doc__, "ccd", "0b57641189ef9a941bf847c078f0cc1ce908af04")
    data = make_images(args.work, COUNTS, NUM_CLASSES, size=SIZE)
    clip = make_clip(args.work / "clip", size=SIZE)
    init = args.work / "init"
    init.mkdir()
    backbone = make_backbone(init / "backbone.safetensors")
    head_sum = spml_head(data, backbone, init)
    # The reference's metadata: its train set = spml's train + val, its val (= test) = spml's test.
    meta = args.work / "metadata"
    meta.mkdir()
    names = {s: (data / f"{s}_images.txt").read_text().split() for s in COUNTS}
    labels = {s: np.load(data / f"{s}_labels.npy") for s in COUNTS}
    np.save(meta / "formatted_train_images.npy", np.array([Path(p).name for p in names["train"] + names["val"]]))
    np.save(meta / "formatted_train_labels.npy", np.concatenate([labels["train"], labels["val"]]).astype(np.float32))
    np.save(meta / "formatted_val_images.npy", np.array([Path(p).name for p in names["test"]]))
    np.save(meta / "formatted_val_labels.npy", labels["test"].astype(np.float32))
    ref = args.work / "ref"
    shutil.copytree(args.reference, ref, ignore=shutil.ignore_patterns(".git"))
    shim(ref, args.work, clip, init)
    record = args.work / "record.json"
    env = {**os.environ, "PARITY_OUT": str(record), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, "main_multi.py", *ARGS], cwd=ref, env=env, check=True)
    rec = json.loads(record.read_text())
    commit = args.commit
    out = {
        "header": {
            "reference": "https://github.com/k0u-id/CCD",
            "commit": commit,
            "command": "python main_multi.py " + " ".join(ARGS),
            "recorded_by": "python3 benchmarks/parity_ccd.py REF_CHECKOUT",
            "shims": [line.strip("* ").strip() for line in __doc__.split("Shims")[1].split("The data:")[0].split("\n* ")[1:]],
            "inputs": {"num_classes": NUM_CLASSES, "size": SIZE, "counts": COUNTS, "epochs": EPOCHS, "lr": LR,
                       "offset": OFFSET, "head": head_sum,
                       "backbone": checksum(load_file(str(backbone))),
                       "clip": checksum(load_file(str(clip[0])))},
        },
        **rec,
    }
    print(f"wrote {pc.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
