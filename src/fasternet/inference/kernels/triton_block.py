"""A whole deployed FasterNet block in one Triton kernel (NHWC), and its launcher.

One program owns ``BLOCK_M`` pixels and ``BLOCK_N`` output channels. It computes the partial 3x3
convolution of its pixels (nine shifted loads of the first ``CP`` channels, one ``tl.dot`` each),
then walks the hidden channels ``BLOCK_H`` at a time: the expansion (``p @ Ec + x[:, CP:] @ Er``,
bias, activation) stays in registers and is multiplied straight into the projection accumulator.
The 2C-wide intermediate never touches memory. The residual is added before the single store.

Output channels are split over programs (each recomputes the expansion for its pixels): a single
pass over all channels spills registers from C = 160 on. A wide partial convolution is taken from
cuDNN instead of being fused (see :func:`block_config`). This module imports Triton: import it
only where Triton is installed.
"""

from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

__all__ = ["BlockConfig", "block_config", "launch_block"]


@triton.jit
def _fasternet_block_kernel(
    x_ptr, p_ptr, y_ptr, wp_ptr, ec_ptr, er_ptr, bias_ptr, pw_ptr,
    NPIX, H, W, C, CP, HID,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_CP: tl.constexpr, FUSE_PCONV: tl.constexpr, ACT: tl.constexpr, PRECISION: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = offs_m < NPIX
    row = offs_m * C
    offs_cp = tl.arange(0, BLOCK_CP)
    cp_mask = offs_cp < CP

    if FUSE_PCONV:
        # Partial 3x3 convolution of the first CP channels, input channels BLOCK_K at a time:
        # p[m, o] = sum_tap sum_i x[m + tap, i] * wp[tap, i, o].
        w_idx = offs_m % W
        h_idx = (offs_m // W) % H
        n_idx = offs_m // (W * H)
        p = tl.zeros([BLOCK_M, BLOCK_CP], dtype=tl.float32)
        for tap in tl.static_range(9):
            hh = h_idx + (tap // 3 - 1)
            ww = w_idx + (tap % 3 - 1)
            valid = m_mask & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
            source = ((n_idx * H + hh) * W + ww) * C
            for i0 in range(0, CP, BLOCK_K):
                offs_i = i0 + tl.arange(0, BLOCK_K)
                i_mask = offs_i < CP
                x_tap = tl.load(
                    x_ptr + source[:, None] + offs_i[None, :], mask=valid[:, None] & i_mask[None, :], other=0.0
                )
                w_tap = tl.load(
                    wp_ptr + tap * CP * CP + offs_i[:, None] * CP + offs_cp[None, :],
                    mask=i_mask[:, None] & cp_mask[None, :],
                    other=0.0,
                )
                p += tl.dot(x_tap, w_tap, input_precision=PRECISION)
        p = p.to(x_ptr.dtype.element_ty)

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < C
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for h0 in range(0, HID, BLOCK_H):
        offs_h = h0 + tl.arange(0, BLOCK_H)
        h_mask = offs_h < HID
        if FUSE_PCONV:
            ec = tl.load(
                ec_ptr + offs_cp[:, None] * HID + offs_h[None, :], mask=cp_mask[:, None] & h_mask[None, :], other=0.0
            )
            hidden = tl.dot(p, ec, input_precision=PRECISION)
        else:  # the partial convolution was computed outside: read it from p_ptr [NPIX, CP]
            hidden = tl.zeros([BLOCK_M, BLOCK_H], dtype=tl.float32)
            for k0 in range(0, CP, BLOCK_K):
                offs_k = k0 + tl.arange(0, BLOCK_K)
                k_mask = offs_k < CP
                p_k = tl.load(
                    p_ptr + offs_m[:, None] * CP + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0
                )
                ec = tl.load(
                    ec_ptr + offs_k[:, None] * HID + offs_h[None, :], mask=k_mask[:, None] & h_mask[None, :], other=0.0
                )
                hidden += tl.dot(p_k, ec, input_precision=PRECISION)
        for k0 in range(CP, C, BLOCK_K):  # the untouched channels, read where they are
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_mask = offs_k < C
            x_k = tl.load(x_ptr + row[:, None] + offs_k[None, :], mask=m_mask[:, None] & k_mask[None, :], other=0.0)
            er = tl.load(
                er_ptr + (offs_k - CP)[:, None] * HID + offs_h[None, :],
                mask=k_mask[:, None] & h_mask[None, :],
                other=0.0,
            )
            hidden += tl.dot(x_k, er, input_precision=PRECISION)
        hidden += tl.load(bias_ptr + offs_h, mask=h_mask, other=0.0).to(tl.float32)[None, :]
        if ACT == 0:
            hidden = tl.maximum(hidden, 0.0)
        else:
            hidden = 0.5 * hidden * (1.0 + tl.math.erf(hidden * 0.7071067811865476))
        pw = tl.load(pw_ptr + offs_h[:, None] * C + offs_n[None, :], mask=h_mask[:, None] & n_mask[None, :], other=0.0)
        acc += tl.dot(hidden.to(x_ptr.dtype.element_ty), pw, input_precision=PRECISION)

    out_mask = m_mask[:, None] & n_mask[None, :]
    shortcut = tl.load(x_ptr + row[:, None] + offs_n[None, :], mask=out_mask, other=0.0)
    y = shortcut.to(tl.float32) + acc
    tl.store(y_ptr + row[:, None] + offs_n[None, :], y.to(y_ptr.dtype.element_ty), mask=out_mask)


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    block_m: int
    block_n: int
    block_h: int
    block_k: int
    block_cp: int
    fuse_pconv: bool
    num_warps: int
    num_stages: int


def _pow2(value: int, minimum: int = 16) -> int:
    return max(minimum, triton.next_power_of_2(value))


def block_config(channels: int, conv_channels: int, hidden: int, dtype: torch.dtype) -> BlockConfig:
    """Tile sizes for a block shape; tests/scripts/compile_block.py checks them for spills on sm80/sm90.

    The partial convolution is fused while its output tile stays small (up to 64 channels in
    16-bit, 32 in fp32); wider ones (FasterNet-S from stage 2 on) come from cuDNN, and the kernel
    fuses the rest of the block, which is where the 2C-wide intermediate lives.
    """
    block_cp = _pow2(conv_channels)
    if dtype == torch.float32:
        return BlockConfig(
            block_m=16,
            block_n=32,
            block_h=16,
            block_k=16,
            block_cp=block_cp,
            fuse_pconv=block_cp <= 32,
            num_warps=4,
            num_stages=1,
        )
    fuse = block_cp <= 64
    # Unfused, hidden chunks of 32 spill 16 bytes on sm90 (ptxas keeps ~96 registers); 64 does not.
    # One pass over up to 256 output channels, so the expansion is not recomputed per output tile:
    # on an H200 these tiles were 1.26-2.16x faster than 32 x 64 ones from C = 80 on, except on
    # S's first stage (0.99x) (benchmarks/results/gpu_h200/run2_configs.jsonl). Eight warps keep
    # the accumulator in registers on sm80 and sm90; four were faster still up to C = 256 (S's
    # first stage 4.97 vs 8.09 ms) but spill registers (sm80 at C = 160 and 256, sm90 at C = 80
    # and 128 in one of fp16/bf16), which tests/scripts/compile_block.py refuses.
    return BlockConfig(
        block_m=32,
        block_n=min(256, _pow2(channels)),
        block_h=32 if fuse else 64,
        block_k=32,
        block_cp=block_cp,
        fuse_pconv=fuse,
        num_warps=4 if _pow2(channels) <= 64 else 8,
        num_stages=2,
    )


ACTIVATIONS = {"relu": 0, "gelu": 1}


def launch_block(
    x: torch.Tensor,
    pconv_weight: torch.Tensor,
    expand_conv_weight: torch.Tensor,
    expand_rest_weight: torch.Tensor,
    expand_bias: torch.Tensor,
    project_weight: torch.Tensor,
    act: str,
    config: BlockConfig | None = None,
) -> torch.Tensor:
    """Run the fused block on an NHWC (channels-last NCHW) tensor with packed weights.

    Packed layouts: ``pconv_weight`` [9, CP, CP] (tap, in, out), ``expand_conv_weight`` [CP, HID],
    ``expand_rest_weight`` [C - CP, HID], ``expand_bias`` [HID], ``project_weight`` [HID, C].
    """
    n, c, h, w = x.shape
    if not x.is_contiguous(memory_format=torch.channels_last):
        x = x.contiguous(memory_format=torch.channels_last)
    cp, hid = expand_conv_weight.shape
    config = config or block_config(c, cp, hid, x.dtype)
    y = torch.empty_like(x, memory_format=torch.channels_last)
    if config.fuse_pconv:
        p = x  # unused
    else:
        taps = pconv_weight.reshape(3, 3, cp, cp).permute(3, 2, 0, 1)  # (out, in, kh, kw)
        p = torch.nn.functional.conv2d(x[:, :cp], taps, padding=1).contiguous(memory_format=torch.channels_last)
    npix = n * h * w
    grid = (triton.cdiv(npix, config.block_m), triton.cdiv(c, config.block_n))
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    _fasternet_block_kernel[grid](
        x, p, y, pconv_weight, expand_conv_weight, expand_rest_weight, expand_bias, project_weight,
        npix, h, w, c, cp, hid,
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_H=config.block_h, BLOCK_K=config.block_k,
        BLOCK_CP=config.block_cp, FUSE_PCONV=config.fuse_pconv, ACT=ACTIVATIONS[act], PRECISION=precision,
        num_warps=config.num_warps, num_stages=config.num_stages,
    )  # fmt: skip
    return y
