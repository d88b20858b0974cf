"""Uniform and Gaussian draws from one generator, a list of per-element generators, or per-pair streams.

Three forms of ``generator`` are accepted wherever a sampler draws noise:

- a ``torch.Generator`` (or None): one stream for the whole batch;
- a list of B generators: element i is drawn from generator i alone (one kernel per element);
- :class:`PairStreams`: counter-based per-pair streams, every draw of the whole batch in O(1)
  kernels, with element i depending only on its key (the form the stages use).

With the last two, a pair's random numbers do not depend on the batch, the ``--shard`` or the
torchrun rank it lands in (as diffusers' ``randn_tensor`` does for Gaussian noise with a list).

PairStreams layout (a counter-based generator in the spirit of Philox, Salmon et al. 2011,
"Parallel random numbers: as easy as 1, 2, 3"): pair i has a 64-bit key (k0_i, k1_i), derived
from ``(seed, index_i, stream)`` through numpy's SeedSequence. Draws are numbered d = 0, 1, 2, ...
in the order they are made (the object counts them, like a generator's state). The 32-bit word of
element j (the flat index within one pair's (C, H, W) block) of draw d of pair i is

    e    = mix(2 d + lane)                               per draw (lane 0; 1 for the second word
                                                         of a Gaussian)
    a_i  = mix(k0_i ^ mix(k1_i ^ e))                     per pair and draw: two Feistel rounds on
    b_i  = mix(k1_i ^ mix(a_i ^ e ^ C))                  the whole 64-bit key
    w_ij = mix((mix(j ^ a_i) + b_i) mod 2^32)            per element

where mix is the ``lowbias32`` integer hash (a bijection of [0, 2^32); Wellons, hash-prospector)
and C the golden-ratio constant. For a fixed draw, (k0, k1) -> (a, b) is a bijection (k1 comes back
from b given a, then k0 from a given k1), so two pairs with different keys never share their 64-bit
draw state: their words agree on one element with probability ~2^-32 and on a whole draw never in
practice. (An earlier layout derived the second per-pair word from the first, so pairs collided on
32 bits: about one identical draw per 100 k pairs.) For fixed (i, d) the map j -> w_ij is a
bijection, so no two elements of one draw share a word.
Uniforms are u = (w >> 8) / 2^24 in [0, 1) (24 bits: exact in float32); normals come from
Box-Muller, z = sqrt(-2 ln u1) cos(2 pi u2) with u1 = ((w1 >> 8) + 1) / 2^24 in (0, 1]
(|z| <= 5.77). All integer arithmetic is done in int64 with every product below 2^63 in magnitude,
so it is exact (no overflow) and the same on every device: a pair's uniforms are bit-identical on the CPU and on CUDA.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_SALT = 0x9E3779B9  # the golden-ratio constant C: the second Feistel round's hash differs from the first's


class PairStreams:
    """Counter-based random streams, one per batch element (see the module docstring for the layout).

    ``keys``: (B, 2) int64 tensor of 32-bit words, on the device the numbers are wanted on.
    Every call to :meth:`uniform` / :meth:`normal` is one numbered draw for all B elements.
    """

    def __init__(self, keys: Tensor):
        if keys.dim() != 2 or keys.shape[1] != 2 or keys.dtype != torch.int64:
            raise ValueError(f"keys must be a (B, 2) int64 tensor, got {tuple(keys.shape)} {keys.dtype}")
        self.keys = keys
        self.draws = 0

    @classmethod
    def for_pairs(cls, seed: int, indices: list[int], stream: int, device: torch.device | str = "cpu") -> PairStreams:
        """Streams for the pairs ``indices`` of a run: pair i's key comes from SeedSequence([seed, i, stream])."""
        words = [np.random.SeedSequence([seed, i, stream]).generate_state(2, dtype=np.uint32) for i in indices]
        keys = torch.tensor(np.array(words, dtype=np.int64).reshape(len(indices), 2), dtype=torch.int64)
        return cls(keys.to(device))

    def __len__(self) -> int:
        return self.keys.shape[0]

    @property
    def device(self) -> torch.device:
        return self.keys.device

    def _words(self, shape: tuple[int, ...], lane: int, draw: int) -> Tensor:
        """(B, *shape) int64 words in [0, 2^32) of draw ``draw`` (see the module docstring)."""
        e = _mix_int(2 * draw + lane)
        k0, k1 = self.keys[:, 0], self.keys[:, 1]
        a = _mix(k0 ^ _mix(k1 ^ e))  # (B,): both key words, then
        b = _mix(k1 ^ _mix(a ^ (e ^ _SALT)))  # (B,): (a, b) a bijection of the 64-bit key (k0, k1)
        n = math.prod(shape)
        j = torch.arange(n, device=self.keys.device, dtype=torch.int64)
        w = _mix((_mix(j[None, :] ^ a[:, None]) + b[:, None]) & _MASK32)
        return w.view(len(self), *shape)

    def uniform(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """u ~ U[0, 1), (B, *shape), 24-bit resolution; one draw."""
        draw, self.draws = self.draws, self.draws + 1
        return ((self._words(tuple(shape), 0, draw) >> 8).to(torch.float32) * 2.0 ** -24).to(dtype)

    def normal(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """z ~ N(0, 1), (B, *shape), by Box-Muller from two words of the same draw; one draw."""
        draw, self.draws = self.draws, self.draws + 1
        u1 = ((self._words(tuple(shape), 0, draw) >> 8) + 1).to(torch.float32) * 2.0 ** -24  # (0, 1]
        u2 = (self._words(tuple(shape), 1, draw) >> 8).to(torch.float32) * 2.0 ** -24  # [0, 1)
        return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)).to(dtype)


Generators = torch.Generator | list[torch.Generator] | PairStreams | None  # a list: one generator per element


def _mul32(x: Tensor, c: int) -> Tensor:
    """(x * c) mod 2^32 for int64 x in [0, 2^32) and a 32-bit constant c, without int64 overflow.

    c >= 2^31 is used as c - 2^32 (the same residue mod 2^32): |x * c| < 2^63 either way, and the
    mask of the (possibly negative, two's complement) product is the residue."""
    return (x * (c - 2**32 if c >= 2**31 else c)) & _MASK32


def _mix(x: Tensor) -> Tensor:
    """lowbias32: a bijective 32-bit integer hash, on int64 tensors holding values in [0, 2^32)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix_int(x: int) -> int:
    """:func:`_mix` on a Python int (the draw number, hashed on the host)."""
    x &= _MASK32
    x ^= x >> 16
    x = (x * 0x7FEB352D) & _MASK32
    x ^= x >> 15
    x = (x * 0x846CA68B) & _MASK32
    return x ^ (x >> 16)


def check_batch(generator: Generators, batch: int) -> None:
    """A list of generators or PairStreams must have exactly one stream per batch element."""
    if isinstance(generator, (list, PairStreams)) and len(generator) != batch:
        raise ValueError(f"got {len(generator)} per-element generators (streams) for a batch of {batch}")


def draw_device(generator: torch.Generator | None, device: torch.device) -> torch.device:
    """Where a draw from ``generator`` happens: on its own device (``device`` without one); the caller
    moves the numbers to ``device`` after, so a CPU generator gives the same numbers whatever device
    the batch lives on."""
    return generator.device if generator is not None else device


def rand_like(x: Tensor, generator: Generators) -> Tensor:
    """u ~ U[0, 1) of x's shape, dtype and device, from ``generator`` (one, a list of B, PairStreams or None).

    Numbers are drawn on the generator's own device and moved, so a CPU generator gives the same
    numbers whatever device the batch lives on."""
    check_batch(generator, x.shape[0])
    if isinstance(generator, PairStreams):
        return generator.uniform(tuple(x.shape[1:]), dtype=x.dtype).to(x.device)
    if isinstance(generator, list):
        return torch.stack(
            [torch.rand(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
        ).to(x.device)
    return torch.rand(x.shape, generator=generator, device=draw_device(generator, x.device), dtype=x.dtype).to(x.device)


def randn(shape: tuple[int, ...], generator: Generators, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """z ~ N(0, I) of ``shape`` (B, ...) on ``device``: PairStreams batched, else diffusers' ``randn_tensor``
    (a generator, a list of B generators, or None)."""
    check_batch(generator, shape[0])
    if isinstance(generator, PairStreams):
        return generator.normal(tuple(shape[1:]), dtype=dtype).to(device)
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(tuple(shape), generator=generator, device=device, dtype=dtype)
