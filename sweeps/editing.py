"""Regenerate the paper's Table 2 on the configured dataset: FID of inpainting (centre
50% x 50%) and outpainting (right 50%) of the test images with the MaskGIT sampler.

    python sweeps/editing.py [--config experiments/fmnist.yaml] [--storage URL] [key=value ...]

Resumable like the ablation; single images: python -m maskgit_lab.edit --help.
"""

from maskgit_lab.sweeps.editing import main

if __name__ == "__main__":
    raise SystemExit(main())
