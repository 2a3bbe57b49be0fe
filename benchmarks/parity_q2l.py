"""Record Query2Label's reference numbers (SlongLiu/query2labels) on tiny data: tests/fixtures/parity/q2l.json.

    python3 benchmarks/parity_q2l.py REF_CHECKOUT [--out tests/fixtures/parity/q2l.json]

REF_CHECKOUT is a checkout of https://github.com/SlongLiu/query2labels. Its ``lib/models``
(``build_q2l``: backbone, sine position encoding, transformer, head; ``aslloss``) and
``main_mlc.py``'s ``add_weight_decay`` and ``train`` (its training loop) are imported from the
checkout in this process and run on the tiny symmetric set of ``tests/parity_vlm.py``; nothing of
its code lands in the project.

The model is theirs at a small size: ResNet-18 (their ``Backbone``: torchvision's ResNet with
``FrozenBatchNorm2d``, stem and ``layer1`` frozen), hidden 512 (no input projection), FFN 1024,
4 heads, 1 encoder + 2 decoder layers, dropout 0 (dropout draws differ on each side), 64 px, 5
classes; ASL gamma_neg 2, gamma_pos 0, clip 0, eps 1e-5, ``--dtgfl`` (the README command's);
``--optim Adam_twd --wd 0`` (Adam), lr 1e-4, batch 24 (the whole train set), 3 epochs.

Shims (names replaced in this process; their files are not edited):

* Modules not installed here and not used by the recorded code paths: ``tensorboard`` (torch's
  ``SummaryWriter``), ``randaugment``, ``termcolor``, their CvT backbone package
  ``models.cls_cvt`` and config reader ``utils.slconfig`` (einops, addict, yapf) -> stubs; ``torchvision.models.utils``
  (moved in torchvision 0.13) -> ``torch.hub``'s ``load_state_dict_from_url``; ``Tensor.cuda`` -> the identity,
  ``torch.cuda.max_memory_allocated`` -> 0, ``dist.get_world_size`` -> 1 (CPU, one process).
* ``torchvision.models.resnet18(pretrained=True, ...)`` in their backbone: built without
  downloading and loaded with the seeded weights of ``tests/parity_vlm.py`` (their frozen
  BatchNorm takes the running statistics and affine values as buffers).
* Initial head: the weights spml.train builds with seed 0 (``q2l`` head at this size), copied into
  their parameter names (the inverse of ``spml.models.heads.query2label_from_reference``).
* Their ``OneCycleLR`` -> a constant learning rate (spml approximates OneCycle by cosine + warm-up:
  a different schedule, see docs/query2label.md; constant on both sides isolates the rest).
* No RandAugment, cutout or EMA (``--ema-epoch`` beyond the run) in the first trajectory.
* Recording: the model's forward wrapped to keep its logits.

A second trajectory, ``recipe``, runs their optimisation as the README command builds it, from the
same initial weights: ``main_mlc.py``'s AdamW (``--optim AdamW --weight-decay 1e-2``, every trained
tensor in one group), their ``OneCycleLR(max_lr=lr, pct_start=0.2)`` stepped after every step (beta1
cycled), and their ``ModelEma`` made before the first epoch and updated after every step
(``--ema-epoch 0``), for 6 full-batch epochs; the EMA's decay is 0.5 instead of 0.9997 so that 6
steps move it measurably. Recorded per epoch: the loss, the EMA's and the trained model's test
logits. No RandAugment or cutout (their draws cannot be matched; spml's are unit-tested).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import parity_common as pc  # noqa: E402
from parity_vlm import COUNTS, NUM_CLASSES, SIZE, checksum, images_tensor, make_backbone, make_images  # noqa: E402

EPOCHS = 3
LR = 1e-4
RECIPE = {"epochs": 6, "weight_decay": 1e-2, "pct_start": 0.2, "ema_decay": 0.5}
HEAD = {"style": "reference", "d_model": 512, "dim_feedforward": 1024, "num_heads": 4, "encoder_layers": 1,
        "decoder_layers": 2, "dropout": 0.0}


def main() -> None:
    """Build the inputs, run their model and training loop, write the fixture."""
    args = pc.vlm_command_line(__doc__, "q2l", "55eb05064f4badbe03423b79e5c9d143da2dff2e")
    torch.set_num_threads(1)
    data = make_images(args.work, COUNTS, NUM_CLASSES, size=SIZE)
    backbone_file = make_backbone(args.work / "backbone.safetensors")

    import torch.distributed as dist
    import torchvision

    from spml.models import create_classifier
    from spml.models.heads.query2label import _map_reference_key

    for name in ("tensorboard", "randaugment", "torch.utils.tensorboard", "termcolor", "models.cls_cvt",
                 "utils.slconfig"):
        sys.modules[name] = types.ModuleType(name)
    sys.modules["models.cls_cvt"].build_CvT = None  # their CvT backbone (einops, addict, yapf), unused with a ResNet
    sys.modules["utils.slconfig"].SLConfig = sys.modules["utils.slconfig"].get_raw_dict = None  # config reader (addict, yapf), unused
    sys.modules["termcolor"].colored = lambda text, *a, **k: text
    # torchvision >= 0.13 moved load_state_dict_from_url (their resnet.py imports it; never called here)
    sys.modules["torchvision.models.utils"] = types.ModuleType("torchvision.models.utils")
    sys.modules["torchvision.models.utils"].load_state_dict_from_url = torch.hub.load_state_dict_from_url
    sys.modules["torch.utils.tensorboard"].SummaryWriter = object
    sys.modules["randaugment"].RandAugment = object
    torch.Tensor.cuda = lambda self, *a, **k: self
    torch.cuda.max_memory_allocated = lambda *a, **k: 0
    dist.get_world_size = lambda *a, **k: 1
    resnet18 = torchvision.models.resnet18

    def seeded_resnet18(pretrained: bool = False, **kwargs) -> torch.nn.Module:  # noqa: ANN003
        model = resnet18(weights=None, **kwargs)
        model.load_state_dict(load_file(str(backbone_file)), strict=False)
        return model

    torchvision.models.resnet18 = seeded_resnet18
    sys.path[:0] = [str(args.reference), str(args.reference / "lib")]
    sys.argv = ["main_mlc.py"]
    import main_mlc  # type: ignore[import-not-found]
    import models as ref_models  # type: ignore[import-not-found]
    from models.query2label import build_q2l  # type: ignore[import-not-found]

    q = types.SimpleNamespace(backbone="resnet18", pretrained=True, hidden_dim=512, position_embedding="sine",
                              dim_feedforward=1024, enc_layers=1, dec_layers=2, nheads=4, dropout=0.0, pre_norm=False,
                              keep_other_self_attn_dec=False, keep_first_self_attn_dec=False, keep_input_proj=False,
                              num_class=NUM_CLASSES, img_size=SIZE, interpotaion=False, amp=False, loss_dev=-1,
                              print_freq=10, ema_epoch=EPOCHS + 1, epochs=EPOCHS)
    model = build_q2l(q)
    torch.manual_seed(0)  # the classifier spml.train builds with seed 0
    spml_model = create_classifier("resnet18", str(backbone_file), NUM_CLASSES, head="query2label", **HEAD)
    spml_head = spml_model.head.state_dict()
    state = model.state_dict()
    copied = 0
    for key in state:
        name = _map_reference_key(key)
        if name is not None:
            value = spml_head[name]
            state[key] = value.reshape(state[key].shape)
            copied += 1
    if copied != len(spml_head):
        raise SystemExit(f"copied {copied} head tensors, spml's head has {len(spml_head)}")
    model.load_state_dict(state)
    initial_state = {k: v.clone() for k, v in model.state_dict().items()}

    names = {s: (data / f"{s}_images.txt").read_text().split() for s in COUNTS}
    labels = {s: np.load(data / f"{s}_labels.npy") for s in COUNTS}
    x = images_tensor(names["train"] + names["val"])
    y = torch.from_numpy(np.concatenate([labels["train"], labels["val"]]).astype(np.float32))
    x_test = images_tensor(names["test"])

    model.eval()
    with torch.no_grad():
        initial_logits = model(x)
    criterion = ref_models.aslloss.AsymmetricLossOptimized(gamma_neg=2, gamma_pos=0, clip=0.0,
                                                           disable_torch_grad_focal_loss=True, eps=1e-5)
    optimizer = torch.optim.Adam(main_mlc.add_weight_decay(model, 0.0), LR, betas=(0.9, 0.999), eps=1e-08, weight_decay=0)
    scheduler = types.SimpleNamespace(step=lambda: None)
    logger = types.SimpleNamespace(info=lambda *a, **k: None)
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    epochs = []
    for epoch in range(EPOCHS):
        loss = main_mlc.train([(x, y)], model, None, criterion, optimizer, scheduler, epoch, q, logger)
        model.eval()
        with torch.no_grad():
            test_logits = model(x_test)
        w = model.fc.W.detach().double()
        epochs.append({"epoch": epoch + 1, "loss": float(loss), "fc_W_norm": float(w.norm()),
                       "fc_W_first": w.flatten()[:8].tolist(), "fc_b": model.fc.b.detach().double().flatten().tolist(),
                       "query_embed_norm": float(model.query_embed.weight.detach().double().norm()),
                       "test_logits": test_logits.double().tolist()})
    # Their README optimisation from the same initial weights: AdamW, OneCycleLR, ModelEma.
    model.load_state_dict(initial_state)
    r = RECIPE
    q.ema_epoch = 0
    param_dicts = [{"params": [p for n, p in model.named_parameters() if p.requires_grad]}]
    optimizer = torch.optim.AdamW(param_dicts, LR, betas=(0.9, 0.999), eps=1e-08, weight_decay=r["weight_decay"])
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, steps_per_epoch=1, epochs=r["epochs"],
                                                    pct_start=r["pct_start"])
    ema_m = main_mlc.ModelEma(model, r["ema_decay"])
    recipe = []
    for epoch in range(r["epochs"]):
        lr = optimizer.param_groups[0]["lr"]
        loss = main_mlc.train([(x, y)], model, ema_m, criterion, optimizer, scheduler, epoch, q, logger)
        model.eval()
        with torch.no_grad():
            ema_logits, test_logits = ema_m.module(x_test), model(x_test)
        recipe.append({"epoch": epoch + 1, "loss": float(loss), "lr": lr, "ema_test_logits": ema_logits.double().tolist(),
                       "test_logits": test_logits.double().tolist()})
    out = {
        "header": {
            "reference": "https://github.com/SlongLiu/query2labels",
            "commit": args.commit,
            "command": "in-process: build_q2l, models.aslloss.AsymmetricLossOptimized, main_mlc.add_weight_decay "
                       f"(--optim Adam_twd --wd 0), main_mlc.train for {EPOCHS} epochs; recipe: AdamW, OneCycleLR, "
                       f"main_mlc.ModelEma, main_mlc.train for {RECIPE['epochs']} epochs",
            "recorded_by": "python3 benchmarks/parity_q2l.py REF_CHECKOUT",
            "shims": [line.strip("* ").replace("\n", " ") for line in __doc__.split("Shims")[1].split("\n* ")[1:]],
            "inputs": {"num_classes": NUM_CLASSES, "size": SIZE, "counts": COUNTS, "epochs": EPOCHS, "lr": LR,
                       "head": HEAD, "backbone": checksum(load_file(str(backbone_file))),
                       "spml_head": checksum(spml_head)},
        },
        "trainable": trainable,
        "initial_logits": initial_logits.double().tolist(),
        "epochs": epochs,
        "recipe": {"settings": {**RECIPE, "lr": LR}, "epochs": recipe},
    }
    print(f"wrote {pc.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
