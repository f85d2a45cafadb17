"""A tiny Hunyuan3D-2 shape model in the folder layout hy3dgen 2.0.2's ``from_pretrained``
reads (``hunyuan3d-dit-v2-0/config.yaml`` + ``model.fp16.safetensors``): the real classes of
the real config (DiT, ShapeVAE, DINOv2 conditioner, flow-matching scheduler), at small sizes,
with their own random initialisation, saved as hy3dgen's loader splits it (``model.``,
``vae.``, ``conditioner.`` prefixes). No trained weights: the loading and inference code is
the package's, the data is made here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

TINY_CONFIG: dict[str, Any] = {
    "model": {
        "target": "hy3dgen.shapegen.models.Hunyuan3DDiT",
        "params": {
            "in_channels": 8,  # = the VAE's embed_dim (latent channels)
            "context_in_dim": 32,  # = the conditioner's hidden size
            "hidden_size": 32,
            "mlp_ratio": 2.0,
            "num_heads": 2,
            "depth": 1,
            "depth_single_blocks": 1,
            "axes_dim": [16],  # = hidden_size / num_heads
            "theta": 10000,
            "qkv_bias": True,
            "guidance_embed": False,
        },
    },
    "vae": {
        "target": "hy3dgen.shapegen.models.ShapeVAE",
        "params": {
            "num_latents": 16,
            "embed_dim": 8,
            "width": 32,
            "heads": 2,
            "num_decoder_layers": 1,
            "num_freqs": 4,
            "include_pi": False,
            "qkv_bias": False,
            "qk_norm": True,
            "scale_factor": 1.0,
        },
    },
    "conditioner": {
        "target": "hy3dgen.shapegen.models.SingleImageEncoder",
        "params": {
            "main_image_encoder": {
                "type": "DinoImageEncoder",
                "kwargs": {
                    "config": {
                        "hidden_size": 32,
                        "num_hidden_layers": 1,
                        "num_attention_heads": 2,
                        "intermediate_size": 64,
                        "patch_size": 14,
                        "image_size": 56,
                    },
                    "image_size": 56,
                    "use_cls_token": True,
                },
            }
        },
    },
    "scheduler": {
        "target": "hy3dgen.shapegen.schedulers.FlowMatchEulerDiscreteScheduler",
        "params": {"num_train_timesteps": 1000},
    },
    "image_processor": {
        "target": "hy3dgen.shapegen.preprocessors.ImageProcessorV2",
        "params": {"size": 64, "border_ratio": 0.15},
    },
}

# Small enough for a 2-core CPU: two flow steps, a 24³ surface grid.
TINY_OPTIONS: dict[str, Any] = {"steps": 2, "octree_resolution": 24, "num_chunks": 4000}


def write_tiny_hunyuan(root: Path, seed: int = 0) -> Path:
    """``root`` laid out like a local tencent/Hunyuan3D-2 copy (shape part only)."""
    import torch
    from hy3dgen.shapegen.pipelines import instantiate_from_config
    from safetensors.torch import save_file

    folder = root / "hunyuan3d-dit-v2-0"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(TINY_CONFIG))
    torch.manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for part in ("model", "vae", "conditioner"):
        module = instantiate_from_config(TINY_CONFIG[part])
        for key, value in module.state_dict().items():
            value = value.half() if value.is_floating_point() else value
            state[f"{part}.{key}"] = value.contiguous()
    save_file(state, str(folder / "model.fp16.safetensors"))
    return root
