"""Model formats other than CTDeepSeg's own folders: ONNX files and nnU-Net v2 results folders, read as data."""
