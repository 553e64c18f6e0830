"""Host-offloaded chunk memory: K/V of complete chunks in (pinned) host memory, landmarks on the GPU.

A chunk memory grows with the context: ``2 * S * H * D`` values of K/V per chunk, against
``H_r * d_rh`` for its landmark. Selection needs every landmark for every token, but attention only
reads the K/V of the few chunks each token picks. So an offloaded memory keeps

* the landmarks in a growable buffer on the compute device (selection runs unchanged),
* the K/V of every complete chunk in a growable host buffer (pinned under CUDA, so copies are
  asynchronous), filled from the device as chunks complete (device -> host on a side stream),
* the K/V of the chunks completed by the latest call that added any ("resident" chunks, at most one
  segment's worth) on the device as well, so that the tokens of a segment read the chunks completed
  inside it without a round trip through the host.

Before attention, :func:`gather_selected` copies the union of the chunks a call selected (per batch
row, deduplicated) from the host into one compact device buffer and renumbers the selection into it.
On CUDA the GPU reads those chunks straight from the pinned host buffers (a Triton row gather on the
compute stream, :func:`hsa_core.ops.gather_rows`): each chunk crosses PCIe once and the CPU never
copies it. ``HSA_OFFLOAD_GATHER=host`` (or ``HSA_BACKEND=torch``) instead gathers them on the CPU
into a pinned staging buffer and copies that in on the side stream. Either way,
:func:`hsa_core.ops.hsa_attention` runs unchanged; the model does this once per selection, so all
the HSA layers that share a selection (RAMba's) share one copy. The values attended are the same
values, in the same slots and order, as on the on-device path: the result is identical (bit for bit
on CPU, where the ops are deterministic).

On a machine without CUDA the same code runs with ordinary memory and no streams, which is how the
tests exercise it. Offloading is an inference feature: the host store is appended to in place and
copies carry no gradient, so a state with a store refuses to run with gradients enabled.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from ..envvars import env_choice
from ..ops import backend_for, gather_rows

__all__ = ["GATHER_MODES", "LANDMARK_MODES", "LANDMARK_WINDOW_CHUNKS", "ChunkStore", "GatherStats", "GrowableBuffer",
           "gather_mode", "gather_selected", "landmark_mode"]


class GrowableBuffer:
    """A tensor that grows along one dimension by amortised doubling: appends copy only the new rows.

    Args:
        template: a tensor of the rows' shape, dtype and device (its size along ``dim`` is ignored
            except as a minimum capacity).
        dim: the growing dimension, 0 or 1; the other of the two is the batch. Host K/V grow along
            dim 0 (chunk-major), so every append and every growth copies one contiguous block (an
            asynchronous device -> host copy needs a contiguous pinned destination).
        capacity: rows to allocate at first (a caller that knows the final length reserves it).
        pin: allocate in pinned host memory (asynchronous host <-> device copies).
    """

    def __init__(self, template: Tensor, *, dim: int, device: torch.device, capacity: int = 0,
                 pin: bool = False) -> None:
        self.shape, self.dim, self.dtype = list(template.shape), dim, template.dtype
        self.device, self.pin = device, pin
        self.length = 0
        self.data = self._alloc(max(capacity, template.shape[dim], 1))

    def _alloc(self, rows: int) -> Tensor:
        shape = list(self.shape)
        shape[self.dim] = rows
        # A normal tensor even inside torch.inference_mode(): a cache prefilled there (hsa_core.generation)
        # may be continued under torch.no_grad(), which may not write into an inference tensor.
        with torch.inference_mode(False):
            return torch.empty(shape, dtype=self.dtype, device=self.device, pin_memory=self.pin)

    @property
    def capacity(self) -> int:
        return self.data.shape[self.dim]

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (one copy of the filled part, when it moves)."""
        if rows > self.capacity:
            new = self._alloc(rows)
            new.narrow(self.dim, 0, self.length).copy_(self.view())
            self.data = new

    def append(self, rows: Tensor, *, non_blocking: bool = False) -> None:
        """Copy ``rows`` after the filled part (growing by at least 2x when full)."""
        n = rows.shape[self.dim]
        if self.length + n > self.capacity:
            self.reserve(max(self.length + n, 2 * self.capacity))
        self.data.narrow(self.dim, self.length, n).copy_(rows, non_blocking=non_blocking)
        self.length += n

    def view(self) -> Tensor:
        """The filled rows (a view: later appends do not change it)."""
        return self.data.narrow(self.dim, 0, self.length)

    def select(self, index: Tensor | slice) -> GrowableBuffer:
        """A new buffer (same capacity) with batch entries ``index`` of the filled rows (a copy)."""
        part = self.view()[index] if self.dim == 1 else self.view()[:, index]
        new = GrowableBuffer(part, dim=self.dim, device=self.device, capacity=self.capacity, pin=self.pin)
        new.append(part)
        return new

    def nbytes(self) -> int:
        """Bytes allocated (capacity, not only the filled rows)."""
        return self.data.numel() * self.data.element_size()


GATHER_MODES = ("device", "host")


def gather_mode() -> str:
    """``HSA_OFFLOAD_GATHER``: ``device`` (default: on CUDA the GPU reads the selected chunks from pinned
    host memory) or ``host`` (the CPU gathers them into a staging buffer first; the older path, kept to
    compare).

    Raises:
        UsageError: any other value (exit code 2 in the CLI).
    """
    return env_choice("HSA_OFFLOAD_GATHER", GATHER_MODES, "device")


LANDMARK_MODES = ("device", "host")

#: Landmarks per window when they live in host memory: the device holds one window at a time
#: (32K chunks = 2M tokens at S=64; 16 MiB for the demo RAMba's 2 x 128 bf16 values per chunk).
LANDMARK_WINDOW_CHUNKS = 1 << 15


def landmark_mode() -> str:
    """``HSA_OFFLOAD_LANDMARKS``: where an offloaded memory keeps its landmarks. ``device`` (default: the
    selection reads them all at every call, so they stay on the GPU) or ``host`` (pinned host memory
    too, copied in a window at a time for each selection: GPU memory no longer grows with the context,
    for one more copy of every landmark per selection).

    Raises:
        UsageError: any other value (exit code 2 in the CLI).
    """
    return env_choice("HSA_OFFLOAD_LANDMARKS", LANDMARK_MODES, "device")


@dataclass
class GatherStats:
    """What the host -> device gathers of one store cost, summed since it was last taken
    (:meth:`ChunkStore.take_gather_stats`): where the time of a long offloaded prefill goes.

    Attributes:
        calls: gathers (one per selection per call).
        device_reads: the gathers among them that the GPU read straight from pinned host memory
            (:func:`hsa_core.ops.gather_rows` on CUDA); the others went through a host staging copy.
        chunks: chunks copied (all batch rows, padding included).
        bytes: bytes of K and V copied from host to device.
        sync_seconds: host time blocked reading the selected ids back, i.e. waiting for the GPU to
            finish the work queued before the selection (the one synchronisation of a gather).
        copy_seconds: host time spent on the copies: the CPU gather into the pinned staging buffer and
            the wait for the previous transfer out of it, or only the kernel launches of a device read.
    """

    calls: int = 0
    device_reads: int = 0
    chunks: int = 0
    bytes: int = 0
    sync_seconds: float = 0.0
    copy_seconds: float = 0.0

    def add(self, other: GatherStats) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class ChunkStore:
    """The offloaded part of one chunk memory (one per memory per cache; shared by the states that
    continue one another, appended in place).

    Attributes:
        chunk_size: S.
        device: the compute device (landmarks, resident chunks, gathered chunks).
        reserve_chunks: capacity to allocate on the first append (the caller's length hint).
        host_landmarks: the landmarks live in host memory too (:func:`landmark_mode`).
        k, v: host buffers of ``(chunks, B, S, H, D)`` (chunk-major; ``None`` until the first chunk).
        landmarks: device buffer of ``(B, chunks, H_r, d_rh)``, or with ``host_landmarks`` a host
            buffer of ``(chunks, B, H_r, d_rh)`` (chunk-major, as K/V) (``None`` until the first chunk).
    """

    chunk_size: int
    device: torch.device
    reserve_chunks: int = 0
    host_landmarks: bool = False
    k: GrowableBuffer | None = None
    v: GrowableBuffer | None = None
    landmarks: GrowableBuffer | None = None
    _copy_stream: torch.cuda.Stream | None = None
    # (first chunk of a device -> host copy in flight, its event), oldest first: a gather waits only
    # for the copies of the chunks it reads, not for the one of the chunks the current call completed
    _appends: deque[tuple[int, torch.cuda.Event]] = field(default_factory=deque)
    _staging: Tensor | None = None
    _staged: torch.cuda.Event | None = None
    _read: torch.cuda.Event | None = None  # after the latest device read of the host buffers
    gather_stats: GatherStats = field(default_factory=GatherStats)

    @classmethod
    def create(cls, chunk_size: int, device: torch.device | str | None, reserve_chunks: int = 0,
               host_landmarks: bool | None = None) -> ChunkStore:
        """A store for ``device``; ``host_landmarks=None``: as ``HSA_OFFLOAD_LANDMARKS`` says."""
        device = torch.device(device if device is not None else "cpu")
        stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        host = landmark_mode() == "host" if host_landmarks is None else host_landmarks
        return cls(chunk_size, device, reserve_chunks, host, _copy_stream=stream)

    @property
    def cuda(self) -> bool:
        return self._copy_stream is not None

    @property
    def num_chunks(self) -> int:
        return 0 if self.landmarks is None else self.landmarks.length

    def take_gather_stats(self) -> GatherStats:
        """The gathers' costs since the last call (then zeroed: several readers never count one twice)."""
        taken, self.gather_stats = self.gather_stats, GatherStats()
        return taken

    def host_nbytes(self) -> int:
        """Host bytes allocated for K/V (and the landmarks, with ``host_landmarks``)."""
        bufs = (self.k, self.v, self.landmarks) if self.host_landmarks else (self.k, self.v)
        return sum(b.nbytes() for b in bufs if b is not None)

    def device_nbytes(self) -> int:
        """Device bytes allocated for the landmarks (0 with ``host_landmarks``)."""
        return 0 if self.landmarks is None or self.host_landmarks else self.landmarks.nbytes()

    def landmarks_view(self) -> Tensor:
        """The landmarks of all chunks so far, ``(B, C, H_r, d_rh)``: a device view, or with
        ``host_landmarks`` a host view (read it through :meth:`landmark_windows`)."""
        assert self.landmarks is not None
        return self.landmarks.view().transpose(0, 1) if self.host_landmarks else self.landmarks.view()

    def landmark_windows(self, num_chunks: int, window_chunks: int = LANDMARK_WINDOW_CHUNKS
                         ) -> Iterator[tuple[int, Tensor]]:
        """Host landmarks of chunks ``0 .. num_chunks-1`` on the device, a window at a time, newest first
        (the windowed selection skips more after the newest): ``(first chunk, (B, n, H_r, d_rh))`` pairs,
        each copied in on the compute stream (asynchronous, from pinned memory) after the device -> host
        copies of those chunks. Every window is copied into the same device buffer (the copy is queued
        on the compute stream after the kernels that read the previous window), so the device holds one
        window whoever still references the last one; a window is only valid until the next is taken."""
        assert self.landmarks is not None and self.host_landmarks
        rows = self.landmarks.data
        buffer = None
        if self._copy_stream is not None:
            self._stream_wait_appends(num_chunks)
            buffer = torch.empty((min(window_chunks, num_chunks), *rows.shape[1:]), dtype=rows.dtype,
                                 device=self.device)
        for c0 in reversed(range(0, num_chunks, window_chunks)):
            part = rows[c0:min(num_chunks, c0 + window_chunks)]
            if buffer is not None:
                part = buffer[:part.shape[0]].copy_(part, non_blocking=True)
            yield c0, part.transpose(0, 1)

    def append(self, k: Tensor, v: Tensor, landmarks: Tensor) -> Tensor:
        """Add ``n`` complete chunks: k, v ``(B, n*S, H, D)`` and landmarks ``(B, n, H_r, d_rh)`` on the
        device. Returns the landmarks of all chunks so far, ``(B, C, H_r, d_rh)`` (a device view).

        K/V go to the host on the side stream (after the compute stream has produced them), so the
        copy overlaps whatever the model computes next; :meth:`gather` waits for it before reading.
        """
        B, n = landmarks.shape[:2]
        # chunk-major (n, B, S, H, D): one contiguous block per append (a no-op for B = 1)
        kc = k.reshape(B, n, self.chunk_size, *k.shape[2:]).transpose(0, 1).contiguous()
        vc = v.reshape(B, n, self.chunk_size, *v.shape[2:]).transpose(0, 1).contiguous()
        if self.landmarks is None:
            cap = max(self.reserve_chunks, n)
            host = torch.device("cpu")
            self.k = GrowableBuffer(kc, dim=0, device=host, capacity=cap, pin=self.cuda)
            self.v = GrowableBuffer(vc, dim=0, device=host, capacity=cap, pin=self.cuda)
            if self.host_landmarks:  # chunk-major (n, B, H_r, d_rh), as K/V
                self.landmarks = GrowableBuffer(landmarks.transpose(0, 1), dim=0, device=host, capacity=cap,
                                                pin=self.cuda)
            else:
                self.landmarks = GrowableBuffer(landmarks, dim=1, device=self.device, capacity=cap)
        assert self.k is not None and self.v is not None
        # (host buffer, rows for it): K/V, and the landmarks when they live on the host too
        to_host = [(self.k, kc.to(self.k.dtype)), (self.v, vc.to(self.v.dtype))]
        if self.host_landmarks:
            to_host.append((self.landmarks, landmarks.transpose(0, 1).contiguous().to(self.landmarks.dtype)))
        else:
            self.landmarks.append(landmarks.to(self.landmarks.dtype))
        if self._copy_stream is None:
            for buf, rows in to_host:
                buf.append(rows)
            return self.landmarks_view()
        # A host buffer that must grow is reallocated and copied on the CPU: finish copies in flight,
        # and the kernels still reading the old buffer before it is freed.
        if self.k.length + n > self.k.capacity:
            self._wait_appends(self.k.length)  # every copy in flight
            if self._read is not None:
                self._read.synchronize()
        self._copy_stream.wait_stream(torch.cuda.current_stream(self.device))
        first = self.k.length
        with torch.cuda.stream(self._copy_stream):
            for buf, rows in to_host:
                buf.append(rows, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._appends.append((first, event))
        # The sources are freed by the compute stream's allocator; keep them until the copy is done.
        for _, rows in to_host:
            rows.record_stream(self._copy_stream)
        return self.landmarks_view()

    def _wait_appends(self, chunks: int) -> None:
        """Block until the host holds chunks ``0 .. chunks-1`` (their device -> host copies are done)."""
        while self._appends and self._appends[0][0] < chunks:
            self._appends.popleft()[1].synchronize()

    def _stream_wait_appends(self, chunks: int) -> None:
        """Make the compute stream (not the host) wait until chunks ``0 .. chunks-1`` are on the host."""
        while self._appends and self._appends[0][1].query():  # done: forget them
            self._appends.popleft()
        stream = torch.cuda.current_stream(self.device)
        for first, event in self._appends:
            if first >= chunks:
                break
            stream.wait_event(event)

    def gather(self, rows: Tensor, ids: Tensor) -> tuple[Tensor, Tensor, torch.cuda.Event | None]:
        """K/V of chunks ``ids`` ``(B, n)`` (host chunk ids, row ``b`` reading row ``b`` of the store)
        on the device: ``(k, v)`` each ``(B, n*S, H, D)``, and the event after which they are there
        (``None`` when they are written on the compute stream itself). ``rows`` is ``arange(B)``, on
        the CPU.

        On CUDA the GPU reads the rows straight from pinned host memory (:func:`hsa_core.ops.gather_rows`,
        on the compute stream); with ``HSA_OFFLOAD_GATHER=host`` or ``HSA_BACKEND=torch`` the CPU gathers
        them into a pinned staging buffer, copied in on the side stream.
        """
        assert self.k is not None and self.v is not None
        ids = ids.cpu()
        B, n = ids.shape
        mode = gather_mode()  # checked on every machine: a misspelt value fails on the CPU too
        device_read = self._copy_stream is not None and mode == "device" \
            and backend_for("host_gather", self.device) == "triton"
        if device_read:
            self._stream_wait_appends(int(ids.max()) + 1)
        else:
            self._wait_appends(int(ids.max()) + 1)  # the rows read here may still be on their way from the device
        flat = (ids * B + rows[:, None]).reshape(-1)  # (chunk, row) -> row of the (C*B, S, H, D) view
        kh = self.k.data.flatten(0, 1)
        vh = self.v.data.flatten(0, 1)
        shape = (B, n * self.chunk_size, *kh.shape[2:])
        stats = self.gather_stats
        stats.calls += 1
        stats.chunks += B * n
        stats.bytes += 2 * B * n * kh[0].numel() * kh.element_size()
        t0 = time.perf_counter()
        if self._copy_stream is None:  # no CUDA: plain memory (under HSA_BACKEND=triton, the interpreted kernel)
            k, v = gather_rows(kh, flat).view(shape), gather_rows(vh, flat).view(shape)
            stats.copy_seconds += time.perf_counter() - t0
            return k, v, None
        if device_read:
            # The kernel reads the pinned buffers on the compute stream. Later device -> host copies
            # into them are ordered after it (append makes the copy stream wait for the compute
            # stream), and a buffer that grows waits for it before it is freed (self._read).
            index = flat.to(self.device)
            k, v = gather_rows(kh, index).view(shape), gather_rows(vh, index).view(shape)
            self._read = torch.cuda.Event()
            self._read.record()
            stats.device_reads += 1
            stats.copy_seconds += time.perf_counter() - t0
            return k, v, None
        staging = self._staging_for(2 * B * n, kh)
        torch.index_select(kh, 0, flat, out=staging[:B * n])
        torch.index_select(vh, 0, flat, out=staging[B * n:])
        stats.copy_seconds += time.perf_counter() - t0
        with torch.cuda.stream(self._copy_stream):
            dev = staging.to(self.device, non_blocking=True)
            self._staged = torch.cuda.Event()
            self._staged.record()
        dev.record_stream(torch.cuda.current_stream(self.device))
        return dev[:B * n].view(shape), dev[B * n:].view(shape), self._staged

    def _staging_for(self, n: int, like: Tensor) -> Tensor:
        """A pinned buffer of at least ``n`` chunks, reused once its previous copy has finished."""
        if self._staged is not None:
            self._staged.synchronize()
        if self._staging is None or self._staging.shape[0] < n:
            self._staging = torch.empty((max(n, 2 * (0 if self._staging is None else self._staging.shape[0])),
                                         *like.shape[1:]), dtype=like.dtype, pin_memory=True)
        return self._staging[:n]

    def select(self, index: Tensor | slice) -> ChunkStore:
        """A new store with batch rows ``index`` (copies; the landmarks stay where they are)."""
        new = ChunkStore.create(self.chunk_size, self.device, self.reserve_chunks, self.host_landmarks)
        if self.landmarks is not None and self.k is not None and self.v is not None:
            self._wait_appends(self.k.length)
            if isinstance(index, Tensor):
                index = index.cpu()
            new.k, new.v = self.k.select(index), self.v.select(index)
            new.landmarks = self.landmarks.select(index if not isinstance(index, Tensor) or self.host_landmarks
                                                  else index.to(self.device))
        return new


def _with_resident(host: tuple[Tensor, Tensor, torch.cuda.Event | None] | None, resident_k: Tensor,
                   resident_v: Tensor) -> tuple[Tensor, Tensor]:
    """``[host chunks, resident chunks]`` along dim 1; the compute stream waits (on the GPU, the CPU
    does not block) for the host chunks' copy on the side stream."""
    if host is None:
        return resident_k, resident_v
    k, v, ready = host
    if ready is not None:
        torch.cuda.current_stream(k.device).wait_event(ready)
    if resident_k.shape[1] == 0:
        return k, v
    return torch.cat([k, resident_k.to(k.dtype)], 1), torch.cat([v, resident_v.to(v.dtype)], 1)


def gather_selected(store: ChunkStore, resident_k: Tensor, resident_v: Tensor, num_chunks: int,
                    indices: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The chunks ``indices`` select, as one compact buffer, and the indices renumbered into it.

    Args:
        store: the memory's host store (chunks ``0 .. num_chunks-1``; the last ``R`` are also resident).
        resident_k, resident_v: ``(B, R*S, H, D)`` device K/V of chunks ``num_chunks-R .. num_chunks-1``.
        num_chunks: C, chunks of the memory state being read.
        indices: ``(B, T, H_r, topk)`` int32 chunk ids, -1 = empty slot.

    Returns:
        ``(k, v, new_indices)``: k, v ``(B, (N + R)*S, H, D)`` on the device: first ``N``
        chunks copied from the host (row ``b``: its own selected host chunks in increasing order,
        padded to the longest row with copies of a chunk nobody reads), then the ``R`` resident
        chunks; ``new_indices`` has ``indices``' shape and dtype, -1 kept.
    """
    S = store.chunk_size
    R = resident_k.shape[1] // S
    boundary = num_chunks - R  # chunks below it are read from the host
    B = indices.shape[0]
    valid = indices >= 0
    on_host = valid & (indices < boundary)
    new = torch.where(valid & ~on_host, indices - boundary, indices)  # resident: offset after the host part
    if boundary == 0:
        return resident_k, resident_v, new
    # Deduplicate per row: keys b * boundary + id (sorted by torch.unique, so row b's chunks form a
    # run, in increasing order); every slot not read from the host gets the key B * boundary, dropped.
    # The keys are int32 while they fit (a 64M-token context is 1M chunks): these (B, T, H_r, topk)
    # temporaries are what a deep context adds to the GPU peak of a segment, so each goes once used.
    sentinel = B * boundary
    key_dtype = torch.int32 if sentinel < torch.iinfo(torch.int32).max else torch.int64
    per_row = (B, *([1] * (indices.dim() - 1)))  # a (B,) vector broadcast over (B, T, H_r, topk)
    row = torch.arange(B, device=indices.device, dtype=key_dtype).view(per_row)
    keys = torch.where(on_host, row * boundary + indices.to(key_dtype), sentinel)
    del valid
    uniq = torch.unique(keys)
    t0 = time.perf_counter()
    uniq_cpu = uniq.cpu()  # the one synchronisation: the host gather needs the ids
    store.gather_stats.sync_seconds += time.perf_counter() - t0
    if int(uniq_cpu[-1]) == sentinel:
        uniq, uniq_cpu = uniq[:-1], uniq_cpu[:-1]
    if uniq_cpu.numel() == 0:
        if R:
            return resident_k, resident_v, new
        # Nothing selected and nothing resident: give the op one chunk, as the on-device path has
        # (every slot is empty, so it is never read).
        host = store.gather(torch.arange(B), torch.zeros(B, 1, dtype=torch.long))
        return (*_with_resident(host, resident_k, resident_v), new)
    uniq_cpu = uniq_cpu.long()
    row_u = uniq_cpu // boundary
    counts = torch.bincount(row_u, minlength=B)
    starts = torch.cumsum(counts, 0) - counts
    n = int(counts.max())
    ids = torch.zeros(B, n, dtype=torch.long)  # padding: chunk 0, never read
    ids[row_u, torch.arange(uniq_cpu.numel()) - starts[row_u]] = uniq_cpu % boundary
    host = store.gather(torch.arange(B), ids)
    # slot -> its chunk's place in its row's run: (index of the key among all keys) - (start of the row)
    pos = torch.searchsorted(uniq, keys, out_int32=True)
    del keys, uniq
    pos -= starts.to(device=indices.device, dtype=torch.int32).view(per_row)
    new = torch.where(on_host, pos.to(indices.dtype), torch.where(new >= 0, new + n, new))
    return (*_with_resident(host, resident_k, resident_v), new)
