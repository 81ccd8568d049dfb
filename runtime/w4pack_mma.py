"""Weight packing for the tensor-core W4 kernel (``codegen/triton_w4_mma_src.py``): every thread's
16-byte load is exactly its ``mma.sync.m16n8k16`` A fragments, done once at build time.

Input: a weight-only group-wise ``qlinear``'s constants as for ``w4pack_gpu.pack_w4`` (codes w
[N, K], one per byte: u4 0..15, or i4 -8..7 stored as u = w + 8; scales [N, G]; optional zeros).

Layout (exact). ``Kq = ceil(K / 64) * 64`` and ``Np = ceil(N / 128) * 128`` (row tiles padded to a
multiple of 8, the most warps a program takes, so no program reads past the array); codes past
K or N are 0.
A *chunk* q is 64 consecutive K codes; a *row tile* r is 16 consecutive channels. In the kernel
a warp owns one row tile; its lane ``l = 4 g + c`` (g = l // 4, c = l % 4) and its mma k-step
``t`` (0..3) within chunk q.

- ``qmma`` int32 [Kq / 64, Np / 16, 32, 4]: word ``qmma[q, r, l, t]`` holds, in nibble ``n``
  (bits 4n .. 4n+3), the code ``u[16 r + g + 8 h, 64 q + 16 c + 4 t + e]`` with
  ``n = 2 (e // 2) + h + 4 (e % 2)`` for h in {0, 1} (channel g or g + 8) and e in 0..3.
  So ``(word >> 4 s) & 0x000F000F`` (s = 0..3) holds one channel's two codes in the low bits of
  each 16-bit half: s = 0 (channel g, e = 0, 1), 1 (g + 8, e = 0, 1), 2 (g, e = 2, 3),
  3 (g + 8, e = 2, 3). These are the four registers a0..a3 of the m16n8k16 A fragment of lane l
  when the fragment's k index kappa (2c, 2c+1, 2c+8, 2c+9) stands for the physical K index
  ``64 q + 16 c + 4 t + e`` (e = 0, 1, 2, 3): a permutation of K inside each chunk, applied
  alike to x (lane l's B fragment of step t is x[., 64 q + 16 c + 4 t + e], e = 0..3: four
  consecutive values, so a lane's 16 x values of a chunk are one contiguous run).
- Scales and zero points: those of ``pack_w4`` ([NGp, N] f32 and uint8 effective zeros, or
  the constant ``zc``), with the effective group ``GE`` >= 64 (a power of two, so every chunk
  lies in one group).

Dequantisation: OR-ing 0x4300 (bf16) or 0x6400 (f16) into each half makes 128 + u (1024 + u),
and subtracting 128 + zeff (1024 + zeff) gives u - zeff exactly; the group scale multiplies the
chunk's f32 mma result.
"""
from __future__ import annotations

import torch

CHUNK = 64        # K codes per chunk (four m16n8k16 k-steps)
TILE = 16         # channels per row tile (one warp)
PAD = 128         # channels padded to whole groups of 8 row tiles


def mma_shape(n: int, k: int) -> tuple[int, int]:
    """(Np, Kq): N padded to 8 row tiles, K to the chunk."""
    return -(-n // PAD) * PAD, -(-k // CHUNK) * CHUNK


def pack_mma(u: torch.Tensor) -> torch.Tensor:
    """``qmma`` (module doc) from unsigned codes ``u`` [N, K] (int64 0..15)."""
    n, k = u.shape
    np_, kq = mma_shape(n, k)
    up = torch.zeros(np_, kq, dtype=torch.int64, device=u.device)
    up[:n, :k] = u
    # [r, h, g, q, c, t, e]: channel 16 r + 8 h + g, K index 64 q + 16 c + 4 t + e
    v = up.reshape(np_ // TILE, 2, 8, kq // CHUNK, 4, 4, 4)
    h = torch.arange(2, device=u.device).reshape(1, 2, 1, 1, 1, 1, 1)
    e = torch.arange(4, device=u.device).reshape(1, 1, 1, 1, 1, 1, 4)
    nib = 2 * (e // 2) + h + 4 * (e % 2)
    words = (v << (4 * nib)).sum(dim=(1, 6))                   # [r, g, q, c, t]: disjoint bits
    words = words.permute(2, 0, 1, 3, 4).reshape(kq // CHUNK, np_ // TILE, 32, 4)
    words = torch.where(words >= 2 ** 31, words - 2 ** 32, words)
    return words.to(torch.int32).contiguous()


def unpack_mma(q: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """Unsigned codes u [N, K] (int64) read back from ``qmma`` (the inverse of :func:`pack_mma`)."""
    nq, nr = q.shape[0], q.shape[1]
    w = q.cpu().to(torch.int64) & 0xFFFFFFFF                   # [q, r, l, t]
    w = w.reshape(nq, nr, 8, 4, 4).permute(1, 2, 0, 3, 4)       # [r, g, q, c, t]
    out = torch.zeros(nr, 2, 8, nq, 4, 4, 4, dtype=torch.int64)
    for h in range(2):
        for e in range(4):
            nib = 2 * (e // 2) + h + 4 * (e % 2)
            out[:, h, :, :, :, :, e] = (w >> (4 * nib)) & 15
    return out.reshape(nr * TILE, nq * CHUNK)[:n, :k]
