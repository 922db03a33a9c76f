"""libopus through ctypes: encode and decode 20 ms frames in the calling
thread, at the rates the edge actually needs.

Why not PyAV's codec contexts (what aiortc uses): its libopus decoder always
decodes at 48 kHz stereo, so the edge then averaged the channels and resampled
48 -> 16 kHz for stt with soxr, per frame; libopus decodes straight to 16 kHz
mono for a fraction of that. And the encoder here is mono at a voice bitrate
with a settable complexity, where aiortc's encodes stereo at 96 kb/s.

The library is the libopus that PyAV ships in its wheel (`av.libs/`), so it is
present wherever aiortc is; a system libopus is the fallback. `available()`
says whether either was found; the edge falls back to aiortc's own codecs if
not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

import numpy as np

OPUS_APPLICATION_VOIP = 2048
OPUS_APPLICATION_AUDIO = 2049
APPLICATIONS = {"voip": OPUS_APPLICATION_VOIP, "audio": OPUS_APPLICATION_AUDIO}
_SET_BITRATE = 4002
_SET_COMPLEXITY = 4010
_SET_INBAND_FEC = 4012
_SET_PACKET_LOSS_PERC = 4014
_SET_MAX_BANDWIDTH = 4004
# Audio bandwidths an encoder can be held to (OPUS_BANDWIDTH_*).
BANDWIDTHS = {"narrowband": 1101, "mediumband": 1102, "wideband": 1103, "superwideband": 1104, "fullband": 1105}
_MAX_PACKET = 1500

_lib: ctypes.CDLL | None = None
_tried = False


def _load() -> ctypes.CDLL | None:
    global _lib, _tried
    if _tried:
        return _lib
    _tried = True
    candidates: list[str] = []
    try:
        import av

        candidates += sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(av.__file__)), "av.libs", "libopus*.so*")))
    except ImportError:  # pragma: no cover - av is an aiortc dependency
        pass
    found = ctypes.util.find_library("opus")
    if found:
        candidates.append(found)
    for path in candidates:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        lib.opus_encoder_create.restype = ctypes.c_void_p
        lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_decoder_create.restype = ctypes.c_void_p
        lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        lib.opus_encode.restype = ctypes.c_int32
        lib.opus_encode.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
        lib.opus_decode.restype = ctypes.c_int
        lib.opus_decode.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.opus_encoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
        lib.opus_get_version_string.restype = ctypes.c_char_p
        _lib = lib
        break
    return _lib


def available() -> bool:
    return _load() is not None


def version() -> str:
    lib = _load()
    return lib.opus_get_version_string().decode() if lib else ""


class OpusError(RuntimeError):
    pass


class Encoder:
    """Mono encoder: one 20 ms frame of int16 PCM in, one packet out.

    `application` "audio" makes libopus use its CELT mode at voice bitrates
    (>= ~24 kb/s): about a third of the CPU of "voip" (SILK or hybrid) for the
    same bitrate, measured on synthesized speech at 32 kb/s (docs/capacity.md).
    "voip" is the better choice below ~24 kb/s or when in-band FEC matters."""

    def __init__(self, rate: int = 48000, bitrate: int = 32000, complexity: int = 6, fec: bool = False,
                 application: str = "audio", max_bandwidth: str = "fullband") -> None:
        lib = _load()
        if lib is None:
            raise OpusError("libopus not found")
        err = ctypes.c_int()
        self._lib = lib
        self._st = lib.opus_encoder_create(rate, 1, APPLICATIONS[application], ctypes.byref(err))
        if err.value != 0 or not self._st:
            raise OpusError(f"opus_encoder_create failed: {err.value}")
        # opus_encoder_ctl is variadic: pass the int argument explicitly typed.
        lib.opus_encoder_ctl(ctypes.c_void_p(self._st), _SET_BITRATE, ctypes.c_int32(bitrate))
        lib.opus_encoder_ctl(ctypes.c_void_p(self._st), _SET_COMPLEXITY, ctypes.c_int32(complexity))
        if max_bandwidth != "fullband":  # what a browser does for maxplaybackrate=16000: "wideband"
            lib.opus_encoder_ctl(ctypes.c_void_p(self._st), _SET_MAX_BANDWIDTH, ctypes.c_int32(BANDWIDTHS[max_bandwidth]))
        if fec:
            lib.opus_encoder_ctl(ctypes.c_void_p(self._st), _SET_INBAND_FEC, ctypes.c_int32(1))
            lib.opus_encoder_ctl(ctypes.c_void_p(self._st), _SET_PACKET_LOSS_PERC, ctypes.c_int32(5))
        self._out = ctypes.create_string_buffer(_MAX_PACKET)
        # Input staged in one buffer whose address is taken once: `ndarray.ctypes`
        # builds a helper object on every call (~3 us, per frame of every session).
        self._in = np.zeros(rate * 120 // 1000, np.int16)  # 120 ms: the longest Opus frame
        self._in_ptr = self._in.ctypes.data

    def encode(self, pcm: np.ndarray) -> bytes:
        n = pcm.size
        if n > self._in.size:
            raise OpusError(f"{n} samples is more than one Opus packet holds")
        self._in[:n] = pcm
        n = self._lib.opus_encode(self._st, self._in_ptr, n, self._out, _MAX_PACKET)
        if n < 0:
            raise OpusError(f"opus_encode failed: {n}")
        return self._out.raw[:n]

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_encoder_destroy(st)


class Decoder:
    """Mono decoder at `rate` (libopus resamples internally for free: it
    synthesizes at the requested rate). `conceal()` is packet-loss concealment
    for one missing 20 ms frame."""

    def __init__(self, rate: int = 16000) -> None:
        lib = _load()
        if lib is None:
            raise OpusError("libopus not found")
        err = ctypes.c_int()
        self._lib = lib
        self.rate = rate
        self._st = lib.opus_decoder_create(rate, 1, ctypes.byref(err))
        if err.value != 0 or not self._st:
            raise OpusError(f"opus_decoder_create failed: {err.value}")
        # 120 ms is the longest Opus packet.
        self._max = rate * 120 // 1000
        self._buf = np.zeros(self._max, np.int16)
        self._buf_ptr = self._buf.ctypes.data  # taken once (see Encoder)
        self._frame = rate // 50

    def decode(self, packet: bytes) -> np.ndarray:
        n = self._lib.opus_decode(self._st, packet, len(packet), self._buf_ptr, self._max, 0)
        if n < 0:
            raise OpusError(f"opus_decode failed: {n}")
        return self._buf[:n].copy()

    def conceal(self, samples: int | None = None) -> np.ndarray:
        n = self._lib.opus_decode(self._st, None, 0, self._buf_ptr, samples or self._frame, 0)
        if n < 0:
            return np.zeros(samples or self._frame, np.int16)
        return self._buf[:n].copy()

    def __del__(self) -> None:
        st, self._st = getattr(self, "_st", None), None
        if st:
            self._lib.opus_decoder_destroy(st)
