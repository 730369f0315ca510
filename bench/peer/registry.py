"""The workloads the peer knows, in reporting order (WORKLOADS), and `build`: workload id ->
its `Bench`, built from seed 0."""

import torch

from .affconv import build_affconv_train
from .classic import (build_convnext_block, build_convnext_block_bf16, build_dwconv,
                      build_inceptionnext_block, build_longconv, build_matmul, build_mlp_train)
from .common import SEED
from .ddp import build_ddp_mlp_train
from .fmnist import build_fmnist
from .limits import build_cntk_gap
from .ntk import build_ntk_cnn, build_ntk_mlp, build_sharpness, build_zoo_ntk, build_zoo_sharpness

# id -> build(length); length is longconv_train's L and ignored by the others.
BUILDERS = {
    "sgemm_peak": lambda length: build_matmul(4096, "sgemm_peak"),
    "matmul_2048": lambda length: build_matmul(2048, "matmul_2048"),
    "dwconv7_train": lambda length: build_dwconv(7),
    "mlp_train": lambda length: build_mlp_train(),
    "convnext_block_train": lambda length: build_convnext_block(),
    "dwconv31_train": lambda length: build_dwconv(31),
    "inceptionnext_block_train": lambda length: build_inceptionnext_block(),
    "longconv_train": build_longconv,
    "ntk_mlp": lambda length: build_ntk_mlp(),
    "ntk_cnn": lambda length: build_ntk_cnn(),
    "sharpness_mlp": lambda length: build_sharpness(),
    "fmnist_epoch": lambda length: build_fmnist(),
    "zoo_ntk_convnext": lambda length: build_zoo_ntk(),
    "zoo_sharpness_convnext": lambda length: build_zoo_sharpness(),
    "cntk_gap": lambda length: build_cntk_gap(64),
    "cntk_gap_16": lambda length: build_cntk_gap(16),
    "ddp_mlp_train": lambda length: build_ddp_mlp_train(),
    "mlp_train_bf16": lambda length: build_mlp_train(bf16=True),
    "convnext_block_bf16": lambda length: build_convnext_block_bf16(),
    "affconv_train": lambda length: build_affconv_train(),
}

WORKLOADS = list(BUILDERS)


def build(workload, length):
    torch.manual_seed(SEED)  # every workload draws its parameters, then inputs, from seed 0
    if workload not in BUILDERS:
        raise ValueError(workload)
    return BUILDERS[workload](length)
