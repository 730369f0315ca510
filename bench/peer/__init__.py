"""The PyTorch peer of kern's benchmarks, one module per workload family; bench/pytorch_peer.py
is its command line.

    common.py    seed, safetensors writer/reader, Bench, Exports, log, model helpers
    classic.py   sgemm_peak, matmul_2048, the block workloads, mlp_train(_bf16), longconv_train
    ntk.py       ntk_mlp, ntk_cnn, sharpness_mlp, zoo_ntk_convnext, zoo_sharpness_convnext
    fmnist.py    fmnist_epoch
    limits.py    cntk_gap, cntk_gap_16
    ddp.py       ddp_mlp_train
    affconv.py   affconv_train
    registry.py  WORKLOADS and build(id, length)
"""
