"""An nnU-Net U-Net's forward pass with the full-resolution layers run in slabs: the same arithmetic, less than
half the memory.

At full resolution a U-Net window holds its first skip, the up-sampled decoder features, their concatenation,
each convolution's output, each normalisation's output and oneDNN's reordered copies of the inputs at once
(about 1.7 GB in float32 for a 32-feature 80x160x160 window; nnU-Net's predictor holds them too). Here the
encoder's and the last decoder stage's convolutions are computed slab by slab along the first axis (a
convolution only needs the input rows its kernel covers), the concatenation exists only one slab at a time, and
normalisation and the non-linearity are applied in place, channel by channel, with their statistics in float32.
Besides the first skip, only the input and output of the convolution being computed are ever whole (measured
on that window: 0.76 GB instead of 1.66 GB in float32, 0.40 instead of 0.86 in bfloat16).

Anything else (residual encoders, deep supervision, layers not listed in ``_lean_block``) runs through the
modules' own forward, so the result never depends on this shortcut being taken.
"""

from __future__ import annotations

from typing import Any

_SLAB = 4  # output rows per convolution slab: as fast as whole windows with oneDNN, and a small transient


def _plain_conv(conv: Any) -> bool:
    """A 3-D convolution with odd kernels and nnU-Net's padding (half the kernel), which slabs reproduce exactly."""
    import torch

    return (
        type(conv) is torch.nn.Conv3d
        and tuple(conv.dilation) == (1, 1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and all(k % 2 == 1 and p == k // 2 for k, p in zip(conv.kernel_size, conv.padding))
    )


def _lean_block(block: Any) -> bool:
    """A ConvDropoutNormReLU whose every step this module can run: the convolution first, then in-place steps."""
    import torch

    steps = list(getattr(block, "all_modules", []))
    allowed = (torch.nn.InstanceNorm3d, torch.nn.BatchNorm3d, torch.nn.LeakyReLU, torch.nn.ReLU, torch.nn.Dropout3d)
    return bool(steps) and _plain_conv(steps[0]) and all(type(step) in allowed for step in steps[1:])


def _conv_slabs(conv: Any, rows: Any, depth: int) -> Any:
    """``conv`` applied to an input of ``depth`` rows that ``rows(a, b)`` returns a slab of, one output slab at a
    time (each reads the input rows its kernel covers, zeros beyond the edges)."""
    import torch.nn.functional as functional

    kernel, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    out_depth = (depth + 2 * pad - kernel) // stride + 1
    out = None
    for start in range(0, out_depth, _SLAB):
        stop = min(start + _SLAB, out_depth)
        first, end = start * stride - pad, (stop - 1) * stride - pad + kernel
        piece = rows(max(first, 0), min(end, depth))
        if first < 0 or end > depth:
            piece = functional.pad(piece, (0, 0, 0, 0, max(-first, 0), max(end - depth, 0)))
        result = functional.conv3d(piece, conv.weight, conv.bias, conv.stride, (0, *conv.padding[1:]))
        if out is None:
            out = result.new_empty((result.shape[0], result.shape[1], out_depth, *result.shape[3:]))
        out[:, :, start:stop] = result
    return out


def _in_place(steps: list, features: Any) -> Any:
    """Normalisation and non-linearity in place, channel by channel (statistics and arithmetic in float32)."""
    import torch
    import torch.nn.functional as functional

    for step in steps:
        if isinstance(step, torch.nn.Dropout3d):
            continue  # identity at inference
        if isinstance(step, torch.nn.LeakyReLU):
            functional.leaky_relu_(features, step.negative_slope)
            continue
        if isinstance(step, torch.nn.ReLU):
            features.relu_()
            continue
        for channel in range(features.shape[1]):
            values = features[:, channel]
            exact = values.float()
            if step.running_mean is None:  # statistics of this window (for one window, batch norm's are the same)
                variance, mean = torch.var_mean(exact, dim=(1, 2, 3), keepdim=True, correction=0)
            else:
                variance, mean = step.running_var[channel].float(), step.running_mean[channel].float()
            scale = torch.rsqrt(variance + step.eps)
            if step.affine:
                scale = scale * step.weight[channel].float()
            exact = (exact - mean) * scale
            if step.affine:
                exact += step.bias[channel].float()
            values.copy_(exact)
    return features


def _block(block: Any, rows: Any, depth: int) -> Any:
    steps = list(block.all_modules)
    return _in_place(steps[1:], _conv_slabs(steps[0], rows, depth))


def _stage(blocks: list, rows: Any, depth: int) -> Any:
    """Stacked blocks in slabs; the first block reads its input (``depth`` rows) through ``rows``, whose sources
    are released once it is done (the decoder's: the first skip and the low-resolution features)."""
    features = _block(blocks[0], rows, depth)
    getattr(rows, "release", lambda: None)()
    for block in blocks[1:]:
        source = features
        features = _block(block, lambda a, b, source=source: source[:, :, a:b], source.shape[2])
        del source
    return features


def _plain_stage_blocks(stage: Any) -> list | None:
    """The ConvDropoutNormReLU blocks of a plain encoder or decoder stage, or None if it holds anything else."""
    import torch

    modules = list(stage) if isinstance(stage, torch.nn.Sequential) else [stage]
    if len(modules) != 1 or not hasattr(modules[0], "convs"):
        return None
    blocks = list(modules[0].convs)
    return blocks if all(_lean_block(block) for block in blocks) else None


def _encode(encoder: Any, x: Any) -> list:
    """The encoder's skips, each plain stage in slabs (its first, strided, convolution reading the previous one's
    rows); any other encoder runs its own forward."""
    stages = list(getattr(encoder, "stages", []))
    blocks = [_plain_stage_blocks(stage) for stage in stages]
    if type(encoder).__name__ != "PlainConvEncoder" or not encoder.return_skips or None in blocks or not blocks:
        return encoder(x)
    skips, features = [], x
    for stage in blocks:
        features = _stage(stage, lambda a, b, source=features: source[:, :, a:b], features.shape[2])
        skips.append(features)
    return skips


def _upsampling(transpconv: Any) -> int | None:
    """The first-axis factor of a non-overlapping transposed convolution (kernel equal to stride), or None."""
    import torch

    if type(transpconv) is not torch.nn.ConvTranspose3d or tuple(transpconv.kernel_size) != tuple(transpconv.stride):
        return None
    if any(transpconv.padding) or any(transpconv.output_padding) or transpconv.groups != 1:
        return None
    return int(transpconv.stride[0])


def lean_forward(network: Any, x: Any) -> Any:
    """``network(x)`` for a dynamic_network_architectures U-Net without deep supervision, the full-resolution
    layers in slabs; any other network runs its own forward."""
    import torch

    decoder = getattr(network, "decoder", None)
    encoder = getattr(network, "encoder", None)
    if decoder is None or encoder is None or getattr(decoder, "deep_supervision", True) or x.shape[0] != 1:
        return network(x)
    last = _plain_stage_blocks(decoder.stages[-1])
    factor = _upsampling(decoder.transpconvs[-1])
    if last is None or factor is None or not _plain_conv(decoder.seg_layers[-1]):
        return network(x)
    skips = _encode(encoder, x)
    low = skips[-1]
    for s in range(len(decoder.stages) - 1):
        low = decoder.stages[s](torch.cat((decoder.transpconvs[s](low), skips[-(s + 2)]), 1))
    rows = _DecoderRows(decoder.transpconvs[-1], factor, low, skips[0])
    depth = skips[0].shape[2]
    del skips, low  # from here the rows hold them, until the stage's first block is done
    features = _stage(last, rows, depth)
    return _conv_slabs(decoder.seg_layers[-1], lambda a, b: features[:, :, a:b], depth)


class _DecoderRows:
    """Rows ``a..b-1`` of the last decoder stage's input: the up-sampled features (from the low-resolution rows
    that cover them) next to the first skip's rows, concatenated one slab at a time."""

    def __init__(self, transpconv: Any, factor: int, low: Any, skip: Any):
        self.transpconv, self.factor, self.low, self.skip = transpconv, factor, low, skip

    def __call__(self, a: int, b: int) -> Any:
        import torch

        first, end = a // self.factor, -(-b // self.factor)
        up = self.transpconv(self.low[:, :, first:end])[:, :, a - first * self.factor : b - first * self.factor]
        return torch.cat((up, self.skip[:, :, a:b].to(up.dtype)), 1)

    def release(self) -> None:
        self.low = self.skip = None
