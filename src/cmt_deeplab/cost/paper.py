"""The paper's Table 2 (CMT-DeepLab, CVPR 2022): what our cost rows are compared with."""

#: The paper's Table 2 (V100, TF 2.7, 1200x800, batch 1; memory on TPUv4).
PAPER_TABLE2 = {
    "max-deeplab-s": {"params": "62M", "gflops": 291, "fps": 11.9, "memory": "6.3G", "pq": 48.4},
    "max-deeplab-l": {"params": "451M", "gflops": 3317, "fps": 2.2, "memory": "28.7G", "pq": 51.1},
    "cmt-deeplab-s": {"params": "95M", "gflops": 396, "fps": 8.1, "memory": "10.2G", "pq": 53.0},
    "cmt-deeplab-l": {"params": "135M", "gflops": 553, "fps": 6.0, "memory": "11.8G", "pq": 54.1},
    "cmt-deeplab-l-rfn": {"params": "270M", "gflops": 1114, "fps": 3.2, "memory": "25.8G", "pq": 55.1},
}

