"""Triton's system shared memory extension: a client on the same host registers part of a POSIX
shared-memory object (its key, as the client gave it to ``shm_open``) under a region name; a request
then names a region, an offset and a byte size in a tensor's parameters instead of sending the data:
inputs are read from there (one copy, into the server, instead of the several a message costs) and
outputs written there.

The object is read and written with pread and pwrite on its descriptor, not through a mapping as Triton
does: touching a mapped page the object cannot back (past its end, after the client shrank it; or a
hole of a sparse object while /dev/shm is full) kills the process with SIGBUS, where pread gives fewer
bytes (or zeros) and pwrite an error. So no client can kill the server through its regions. Each region
holds its object's descriptor until it is unregistered and no request uses it; the number of regions is
bounded (--max-shared-memory-regions) so descriptors cannot run out.

Triton's words (its SharedMemoryManager and the gRPC frontend's parameter parsing) where it has them, and
its codes but where the client's mistake is not the server's failure: a key that does not open a
shared-memory object, and an output region too small for the output, are INVALID_ARGUMENT (Triton:
INTERNAL, an HTTP 500 that dashboards count as the server's error). Two more things differ, both in the
client's favour: an offset need not be a multiple of the page size (Triton's mmap refuses one that is
not), and unregistering a region that requests still use takes the name away at once (it can be
registered again) while the requests that hold it finish with it (Triton lists it until then). CUDA
shared memory is not served (see ``cuda_register``).

The regions are those of the server's own host (of its pod on Kubernetes, whose /dev/shm is its own):
any client that can reach the protocol can read and write every shared-memory object the server's
user may open, as with Triton. ``--grpc-restricted-protocol shared-memory:KEY=VALUE`` keeps the
registering to those who hold the key.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from tensorgate.errors import Code, InvalidArgument, NotFound, ServerError, Unimplemented, clip
from tensorgate.proto import inference_pb2 as pb

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # where glibc's shm_open keeps POSIX shared-memory objects on Linux
# Keys Triton keeps for its Python backend's own regions.
RESERVED_PREFIX = "triton_python_backend_shm_region_"
REGION = "shared_memory_region"
OFFSET = "shared_memory_offset"
BYTE_SIZE = "shared_memory_byte_size"
PARAMETERS = (REGION, OFFSET, BYTE_SIZE)


class _Descriptor:
    """An open shared-memory object, closed when the last region or request holding it lets it go."""

    __slots__ = ("fd",)

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __del__(self) -> None:
        os.close(self.fd)


@dataclass(frozen=True, slots=True)
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    file: _Descriptor

    def status(self) -> pb.SystemSharedMemoryStatusResponse.RegionStatus:
        return pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name=self.name, key=self.key, offset=self.offset, byte_size=self.byte_size
        )


@dataclass(frozen=True, slots=True)
class Span:
    """Bytes of a region that a request reads its input from or writes its output to."""

    region: str
    key: str
    file: _Descriptor
    start: int  # where the span starts in the object
    size: int

    def _shrunk(self, held: int) -> InvalidArgument:
        return InvalidArgument(
            f"shared memory region '{clip(self.region)}' is no longer whole: its object '{clip(self.key)}' now "
            f"holds {held} bytes, fewer than the {self.start + self.size} this request uses; register the region "
            "again"
        )

    def read(self) -> bytearray:
        data = bytearray(self.size)
        view = memoryview(data)
        done = 0
        while done < self.size:  # pread stops short only at the object's end (or past 2 GiB a call)
            got = os.preadv(self.file.fd, [view[done:]], self.start + done)
            if not got:
                raise self._shrunk(os.fstat(self.file.fd).st_size)
            done += got
        return data

    def write(self, data: np.ndarray) -> None:
        """``data`` (bytes as uint8, at most :attr:`size` of them) at the span's start."""
        held = os.fstat(self.file.fd).st_size
        if held < self.start + self.size:  # pwrite would grow the client's object
            raise self._shrunk(held)
        view = data.data  # (uint8, contiguous: a flat view of bytes)
        done = 0
        try:
            while done < len(view):
                done += os.pwrite(self.file.fd, view[done:], self.start + done)
        except OSError as exc:  # ENOSPC: /dev/shm is full and the client's object is sparse there
            raise InvalidArgument(
                f"cannot write to shared memory region '{clip(self.region)}' (object '{clip(self.key)}'): "
                f"{exc.strerror}"
            ) from None


@dataclass(frozen=True, slots=True)
class Location:
    """Where a tensor of a request lies in shared memory (its parameters)."""

    region: str
    offset: int
    byte_size: int


def location(tensor: str, parameters: Mapping[str, pb.InferParameter]) -> Location | None:
    """The shared-memory location a tensor's parameters name, or None when they name none;
    INVALID_ARGUMENT, in Triton's words, for parameters of the wrong type or one without the others."""
    params = {k: parameters[k] for k in PARAMETERS if k in parameters}
    if not params:
        return None
    for key, expected in ((REGION, "string_param"), (OFFSET, "int64_param"), (BYTE_SIZE, "int64_param")):
        if key in params and params[key].WhichOneof("parameter_choice") != expected:
            raise InvalidArgument(
                f"invalid value type for '{key}' parameter for tensor '{clip(tensor)}', expected {expected}."
            )
    if REGION not in params:
        key = OFFSET if OFFSET in params else BYTE_SIZE
        raise InvalidArgument(f"'{key}' can not be specified without '{REGION}' parameter for tensor '{clip(tensor)}'")
    if BYTE_SIZE not in params:
        raise InvalidArgument(
            f"'{BYTE_SIZE}' must be specified along with '{REGION}' parameter for tensor '{clip(tensor)}'"
        )
    offset = params[OFFSET].int64_param if OFFSET in params else 0
    byte_size = params[BYTE_SIZE].int64_param
    region = params[REGION].string_param
    for key, value in ((OFFSET, offset), (BYTE_SIZE, byte_size)):
        if value < 0:
            raise InvalidArgument(f"'{key}' of tensor '{clip(tensor)}' must not be negative, not {value}")
    return Location(region, offset, byte_size)


def _open(name: str, key: str) -> int:
    """The descriptor of the shared-memory object ``key`` names (as shm_open takes it: leading slashes
    aside, one file name), open for reading and writing; Triton's words if it cannot be."""
    base = key.lstrip("/")
    if not base or "/" in base or base in (".", "..") or "\0" in base:  # shm_open's own rule: no path, one name
        raise InvalidArgument(f"Unable to open shared memory region: '{clip(key)}'")
    try:
        # No link followed, no FIFO waited on: only a plain shared-memory object of /dev/shm is taken.
        fd = os.open(os.path.join(SHM_DIR, base), os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        log.info("event=shm_open_failed region=%s key=%s reason=%s", clip(name), clip(key), exc.strerror)
        raise InvalidArgument(f"Unable to open shared memory region: '{clip(key)}'") from None
    return fd


class SystemSharedMemory:
    """The system shared-memory regions registered with the server, by name; at most ``limit`` of them."""

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._regions: dict[str, Region] = {}

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if key.startswith(RESERVED_PREFIX):
            raise InvalidArgument(
                f"cannot register shared memory region '{clip(name)}' with key '{clip(key)}' as the key contains "
                f"the reserved prefix '{RESERVED_PREFIX}'"
            )
        if name in self._regions:
            raise ServerError(f"shared memory region '{clip(name)}' already in manager", Code.ALREADY_EXISTS)
        if len(self._regions) >= self.limit:
            held = (
                f"the server holds {len(self._regions)} regions, its limit (--max-shared-memory-regions); "
                "unregister regions no longer used"
                if self.limit
                else "system shared memory is off on this server (--max-shared-memory-regions 0)"
            )
            raise ServerError(
                f"failed to register shared memory region '{clip(name)}': {held}", Code.RESOURCE_EXHAUSTED
            )
        file = _Descriptor(_open(name, key))  # closed with the last holder, whatever goes wrong below
        info = os.fstat(file.fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidArgument(f"Invalid shared memory region: '{clip(key)}' (not a shared-memory object)")
        if offset + byte_size > info.st_size:
            raise InvalidArgument(
                f"failed to register shared memory region '{clip(name)}': invalid args (offset {offset} + "
                f"byte_size {byte_size} is beyond the {info.st_size} bytes of '{clip(key)}')"
            )
        if byte_size == 0:
            raise InvalidArgument(
                f"failed to register shared memory region '{clip(name)}': unable to process address space "
                "(byte_size is 0)"
            )
        self._regions[name] = Region(name, key, offset, byte_size, file)
        log.info(
            "event=shm_registered region=%s key=%s offset=%d byte_size=%d", clip(name), clip(key), offset, byte_size
        )

    def unregister(self, name: str) -> None:
        """Forget region ``name`` (every region if empty); a name not registered is no error (Triton's).
        A request that holds a span of the region finishes with it: the object's descriptor is closed
        when the last of them has."""
        names = [name] if name else list(self._regions)
        for each in names:
            region = self._regions.pop(each, None)
            if region is not None:
                log.info("event=shm_unregistered region=%s key=%s", clip(each), clip(region.key))

    def status(self, name: str) -> list[Region]:
        """Every region (``name`` empty), or the one named; NOT_FOUND if it is not registered."""
        if not name:
            return sorted(self._regions.values(), key=lambda r: r.name)
        region = self._regions.get(name)
        if region is None:
            raise NotFound(f"Unable to find system shared memory region: '{clip(name)}'")
        return [region]

    def span(self, where: Location) -> Span:
        """The bytes a tensor's location names; Triton's errors for a region not registered and for bytes
        beyond it."""
        region = self._regions.get(where.region)
        if region is None:
            raise NotFound(f"Unable to find shared memory region: '{clip(where.region)}'")
        if where.offset >= region.byte_size:
            raise InvalidArgument(f"Invalid offset for shared memory region: '{clip(where.region)}'")
        if where.offset + where.byte_size > region.byte_size:
            raise InvalidArgument(f"Invalid offset + byte size for shared memory region: '{clip(where.region)}'")
        return Span(region.name, region.key, region.file, region.offset + where.offset, where.byte_size)


NO_REGIONS = SystemSharedMemory(0)  # what a decode without a server's registry sees: none registered


def cuda_register(name: str) -> None:
    """CUDA shared memory (device buffers a client shares through CUDA IPC handles) is not served. Its
    status lists no region and unregistering succeeds, as on a Triton without GPUs, so clients that
    clean up at start (perf_analyzer, Triton's examples) go on with system shared memory."""
    raise Unimplemented(
        f"failed to register CUDA shared memory region: '{clip(name)}': CUDA shared memory is not supported by "
        "tensorgate yet; register system shared memory, or send the tensors in the request"
    )
