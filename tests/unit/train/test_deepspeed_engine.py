"""The engine DeepSpeed builds from the run's config (raytrain.train.step.deepspeed_engine), one step on one
gloo rank: a user's DeepSpeed file changes its settings, and QLoRA (4-bit and 8-bit bitsandbytes on CPU)
trains only the adapter over the frozen quantized weights, under ZeRO-2 and (4-bit) ZeRO-0."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pickle
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
QLORA_DIR = Path(sys.prefix) / "qlora"  # where `make env` puts bitsandbytes (see the Makefile)
LORA = {"model.lora.enabled": True, "model.lora.r": 4, "model.lora.alpha": 8, "model.lora.dropout": 0.0}


def test_user_settings_and_quantized_lora(base_config_dict, media_prompts, tmp_path):
    assert importlib.util.find_spec("bitsandbytes") or (QLORA_DIR / "bitsandbytes").is_dir(), \
        f"bitsandbytes is neither installed nor in {QLORA_DIR} (make env puts it there)"
    user = tmp_path / "ds_config.json"
    user.write_text(json.dumps({"gradient_clipping": 0.5, "zero_optimization": {"stage": 2, "reduce_bucket_size": 12345}}))
    runs = {"generated": LORA, "user": {**LORA, "train.deepspeed_config": str(user)},
            "4bit": {**LORA, "model.quantization": "4bit"}, "8bit": {**LORA, "model.quantization": "8bit"},
            "4bit-zero0": {**LORA, "model.quantization": "4bit", "train.zero_stage": 0}}
    inp, out = tmp_path / "in.pkl", tmp_path / "out.json"
    inp.write_bytes(pickle.dumps({"raw": base_config_dict, "prompts": media_prompts, "runs": runs}))
    path = os.pathsep.join([str(QLORA_DIR), str(REPO), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.engine_step", str(inp), str(out)], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": path}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    results = json.loads(out.read_text())

    generated, mine = results["generated"], results["user"]
    assert (generated["gradient_clipping"], generated["reduce_bucket_size"]) == (1.0, 500_000_000)  # DeepSpeed's default bucket
    assert (mine["gradient_clipping"], mine["reduce_bucket_size"], mine["zero_stage"]) == (0.5, 12345, 2)
    assert generated["quantized_layers"] == [] and generated["optimizer"] == "AdamW"
    # ZeRO-0: DeepSpeed steps the AdamW it was given itself, with no ZeRO optimizer around it.
    assert (results["4bit-zero0"]["zero_stage"], results["4bit-zero0"]["engine_optimizer"]) == (0, "AdamW")
    assert generated["engine_optimizer"] == "DeepSpeedZeroOptimizer"
    for bits, layer in (("4bit", "Linear4bit"), ("8bit", "Linear8bitLt"), ("4bit-zero0", "Linear4bit")):
        run = results[bits]
        assert layer in run["quantized_layers"], run["quantized_layers"]
        assert math.isfinite(run["loss"]) and run["loss"] != 0.0
        assert run["trainable"] and all("lora_" in n for n in run["trainable"])
        assert run["changed"] and run["policy_drift"] > 0  # the adapter trained
        assert run["base_drift"] == 0.0  # the quantized base did not move
