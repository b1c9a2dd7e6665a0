"""Adapters to engines that already run at scale (Ray Data, Triton Inference Server); each is an extra."""
