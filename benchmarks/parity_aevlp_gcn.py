"""Record AEVLP's frozen text GCN (Fsoft-AIC/AEVLP ``models.py``) on seeded inputs: tests/fixtures/parity/aevlp_gcn.json.

    python3 benchmarks/parity_aevlp_gcn.py REF_CHECKOUT [--out tests/fixtures/parity/aevlp_gcn.json]

REF_CHECKOUT is a scratch checkout of https://github.com/Fsoft-AIC/AEVLP (its ``clip/`` folder with
``bpe_simple_vocab_16e6.txt.gz`` included: ``models.py`` imports it). Its ``models.get_relation``
(the relation's top-k sparsification, row reweighting and diagonal), ``models.GraphConvolution``
(float16 weights, float16 relation) and ``PseudoLabelGeneratorOpenAI.gcn_forward`` (three layers
with LeakyReLU 0.2) run in this process; nothing of its code lands in the project. As its
``generate`` does, the GCN output is added to the raw text features, the sum normalised and
multiplied with unit image features.

Inputs (``tests/parity_vlm.py`` ``gcn_inputs``): seeded raw text features shaped like CLIP's (512
wide), their cosine similarities as the relation file (the release ships one per dataset; theirs
are not copied), seeded unit image features. Two settings: VOC's (20 classes, top-k 20, reweight
0.2) and COCO's (80 classes, top-k 62).

Shims: ``transformers`` (imported by ``models.py``, unused here) is an empty stand-in module; the
GCN weights are spml's seeded draws (``spml.vlm.text_gcn.TextGcn(512, seed 0)``), copied into their
``GraphConvolution`` layers (the release draws unseeded ones); the relation file is written from
the inputs to a scratch ``.npy``; ``P['device']`` is ``cpu``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

import parity_common as pc  # noqa: E402
from parity_vlm import gcn_inputs  # noqa: E402

from spml.vlm.text_gcn import TextGcn  # noqa: E402

SETTINGS = {"voc": {"num_classes": 20, "topk": 20, "reweight": 0.2, "T": 0.3},
            "coco": {"num_classes": 80, "topk": 62, "reweight": 0.2, "T": 0.2}}
SEED = 0


def main() -> None:
    """Run their relation and GCN on the inputs of each setting; write the fixture."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "fixtures" / "parity" / "aevlp_gcn.json")
    parser.add_argument("--commit", default=pc.mirror_commit("Fsoft-AIC/AEVLP"), help="the checkout's commit")
    args = parser.parse_args()
    torch.set_num_threads(1)
    transformers = types.ModuleType("transformers")
    for name in ("CLIPProcessor", "CLIPVisionModel", "CLIPVisionModelWithProjection", "AutoTokenizer",
                 "CLIPTextModelWithProjection"):
        setattr(transformers, name, None)
    sys.modules["transformers"] = transformers
    sys.path.insert(0, str(args.reference))
    sys.argv = ["main.py"]
    import models  # type: ignore[import-not-found]

    records = {}
    spml_gcn = TextGcn(512, SEED)
    for name, s in SETTINGS.items():
        inputs = gcn_inputs(s["num_classes"])
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "relation.npy"
            np.save(path, inputs["similarity"])
            P = {"relation": str(path), "sparse_topk": s["topk"], "num_classes": s["num_classes"],  # noqa: N806
                 "reweight_p": s["reweight"], "T": s["T"], "device": "cpu"}
            _, gcn_relation = models.get_relation(P)
        layers = [models.GraphConvolution(512, 1024), models.GraphConvolution(1024, 1024), models.GraphConvolution(1024, 512)]
        for layer, weight in zip(layers, spml_gcn.weights):
            layer.weight.data.copy_(weight.data)
        generator = types.SimpleNamespace(gc1=layers[0], gc2=layers[1], gc3=layers[2], relu=torch.nn.LeakyReLU(0.2),
                                          relu2=torch.nn.LeakyReLU(0.2), gcn_relation=gcn_relation, P=P)
        identity = torch.from_numpy(inputs["text"]).to(torch.float16)  # their fp16 CLIP's raw text features
        text = models.PseudoLabelGeneratorOpenAI.gcn_forward(generator, identity)
        text += identity
        text = text / text.norm(dim=-1, keepdim=True)
        sims = torch.from_numpy(inputs["images"]).to(torch.float16) @ text.t()
        records[name] = {**s, "gcn_relation": gcn_relation.double().tolist(), "text_first": text.double()[:, :8].tolist(),
                         "sims": sims.double().tolist()}
    out = {
        "header": {
            "reference": "https://github.com/Fsoft-AIC/AEVLP",
            "commit": args.commit,
            "command": "in-process: models.get_relation, models.GraphConvolution x 3, "
                       "PseudoLabelGeneratorOpenAI.gcn_forward, then generate's sum, normalisation and similarities",
            "recorded_by": "python3 benchmarks/parity_aevlp_gcn.py REF_CHECKOUT",
            "shims": [line.strip() for line in __doc__.split("Shims: ")[1].split("\n\n")[0].replace("\n", " ").split("; ")],
            "inputs": {"seed": SEED, "gcn_inputs": "tests/parity_vlm.py gcn_inputs(num_classes)"},
        },
        **records,
    }
    print(f"wrote {pc.write_json(args.out, out)}")


if __name__ == "__main__":
    main()
