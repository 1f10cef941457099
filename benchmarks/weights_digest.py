"""What checking a model directory's weight digest costs: ``load_model_dir`` with the SHA-256
of ``model.safetensors`` checked against ``config.yaml`` vs the same directory without a
recorded digest (loaded unchecked), same process, alternating rounds; plus the hash alone.

    python benchmarks/weights_digest.py [--model cmt-deeplab-s] [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import alternating_medians, report_load  # noqa: E402

import cmt_deeplab  # noqa: E402
from cmt_deeplab.data.metadata import coco_panoptic_info  # noqa: E402
from cmt_deeplab.model_dir import DIGEST_KEY, load_model_dir, save_model_dir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="cmt-deeplab-s")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    info = coco_panoptic_info()
    with tempfile.TemporaryDirectory() as tmp:
        model = cmt_deeplab.build_model(args.model, num_classes=info.num_classes,
                                        num_thing_classes=info.num_thing_classes)
        checked = save_model_dir(Path(tmp) / "checked", model, {"data": info})
        del model
        unchecked = Path(shutil.copytree(checked, Path(tmp) / "unchecked"))
        config = yaml.safe_load((unchecked / "config.yaml").read_text())
        del config[DIGEST_KEY]
        (unchecked / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        data = (checked / "model.safetensors").read_bytes()

        def hash_only() -> None:
            hashlib.sha256(data).hexdigest()

        print(report_load())
        times = alternating_medians({"unchecked": lambda: load_model_dir(unchecked),
                                     "checked": lambda: load_model_dir(checked),
                                     "sha256": hash_only}, rounds=args.rounds)
    size = len(data) / 2**20
    print(f"{args.model}: model.safetensors {size:.0f} MiB")
    print(f"load_model_dir unchecked {times['unchecked']:.3f} s, checked {times['checked']:.3f} s"
          f" ({times['checked'] / times['unchecked']:.3f}x); SHA-256 alone {times['sha256']:.3f} s"
          f" ({size / times['sha256']:.0f} MiB/s, {times['sha256'] / times['unchecked']:.1%} of "
          "an unchecked load)")
    print(report_load())


if __name__ == "__main__":
    main()
