"""The paper's numbers (MaskGIT, Chang et al., CVPR 2022), printed beside ours in every table,
labelled as the paper's: they are ImageNet (Tables 1 and 3) and Places2 (Table 2) results
and are not comparable in value with the Fashion-MNIST evaluator's."""

from __future__ import annotations

# Table 3 (ImageNet 256, one model trained per schedule): schedule -> (best T, FID, IS, NLL).
PAPER_TABLE3: dict[str, tuple[int, float, float, float]] = {
    "exponential": (8, 7.89, 156.3, 4.83),
    "cubic": (9, 7.26, 165.2, 4.63),
    "square": (10, 6.35, 179.9, 4.38),
    "cosine": (10, 6.06, 181.5, 4.22),
    "linear": (16, 7.51, 113.2, 3.75),
    "square_root": (32, 12.33, 99.0, 3.34),
    "logarithmic": (60, 29.17, 47.9, 3.08),
}

# Table 1 (ImageNet 256): MaskGIT and the same-architecture autoregressive baseline (VQGAN*).
# CAS is top-1 / top-5 x 100; "steps" are forward passes per image.
PAPER_TABLE1: dict[str, dict[str, float]] = {
    "maskgit": {"fid": 6.18, "is": 182.1, "precision": 0.80, "recall": 0.51, "steps": 8,
                "cas_top1": 63.14, "cas_top5": 84.45},
    "ar": {"fid": 18.65, "is": 80.4, "precision": 0.78, "recall": 0.26, "steps": 256,
           "cas_top1": 53.10, "cas_top5": 76.18},
}

# Table 2 (Places2 512 x 512, MaskGIT): FID of inpainting the centre 50% x 50% and of
# outpainting the right 50%.
PAPER_TABLE2: dict[str, float] = {"inpaint-center": 7.92, "outpaint-right": 6.78}
