"""Untrusted upload bytes -> one model-ready clip (no torch, no web framework).

:func:`service.decoder.decode.decode_clip` turns an uploaded file (any video PyAV
decodes, or an ``.npy`` clip) into uint8 ``[clip_len, crop_size, crop_size, 3]`` RGB
0..255, the way MMAction2's test pipeline does: ``SampleFrames`` (test mode, one clip),
then resize the short side to ``crop_size`` (or to the model's ``resize``: a short
side, or a fixed ``(h, w)`` as torchvision's R3D/MC3/R(2+1)D transforms), then
centre-crop, with the model's resize arithmetic (``transform``). The gateway, the CLI
and notebooks share it, and a gateway process does not load torch.

Modules (this ``__init__`` imports none of them: :mod:`.npy` must stay importable, and
packable into a model archive, with numpy alone):

* :mod:`.decode` -- :func:`~service.decoder.decode.decode_clip`, the entry point;
* :mod:`.errors` -- the errors a rejected upload gets, each with a stable ``code``
  (the gateway's one table, :mod:`service.gateway.errors`, gives each its HTTP status);
* :mod:`.limits` -- :class:`~service.decoder.limits.DecodeLimits` and the budget that
  checks them while decoding;
* :mod:`.sampling` -- which source frames make the clip;
* :mod:`.resize` -- resize and centre-crop of one frame;
* :mod:`.sniff` -- what the upload is, from its first bytes;
* :mod:`.npy` -- the one reader of ``.npy`` arrays from untrusted bytes (numpy only:
  the gateway's decoder, the wire format and the model-server handler use it);
* :mod:`.npy_clip` -- an ``.npy`` upload -> a clip;
* :mod:`.pyav` and :mod:`.keyframes` -- a video upload -> a clip, decoding only what
  the sampled frames need;
* :mod:`.clip` -- :class:`~service.decoder.clip.DecodedClip`, the result.

What is accepted, and which error a rejected upload gets
--------------------------------------------------------
* **Videos**: any container and codec PyAV (FFmpeg) decodes whose first video
  stream yields at least 2 frames: mp4/H.264, webm/VP8/VP9, mkv, avi/MJPEG, mov,
  animated GIF, ... Display rotation metadata (phone videos) is applied, so
  portrait clips come out upright.
* **npy**: recognised by its magic bytes ``\\x93NUMPY`` (whatever the
  Content-Type says); it must hold uint8 ``[T, H, W, 3]`` RGB. An array that is
  already ``[clip_len, crop_size, crop_size, 3]`` is used as is, bit-exact (no
  sampling, no resize), so crafted adversarial clips reach the model unchanged.
  Any other shape is sampled, resized and cropped like a video.
* ``not_a_video`` (:class:`~service.decoder.errors.NotAVideoError`; HTTP 415) -- the
  upload is media we can identify but it has no motion: a still image (PNG, JPEG,
  BMP, WebP, a 1-frame GIF or any other single-frame file; an image FFmpeg cannot
  open is still recognised by its magic bytes), a file with audio or subtitles but
  no video stream, an ``.npy`` with a single frame.
* ``bad_video`` (:class:`~service.decoder.errors.BadVideoError`; HTTP 400) -- anything
  else that does not decode: an empty body, random bytes, text (always rejected,
  whatever it contains, so text never reaches FFmpeg's subtitle/playlist parsers), a
  truncated or corrupt file (unreadable container, an incomplete packet or a decoder
  error before the last frame needed), a stream whose codec has no decoder, an
  ``.npy`` with a malformed header (numpy's parser with the checks of :mod:`.npy`),
  the wrong dtype/rank/channels or a header that does not match its payload, a body
  declared ``application/x-npy`` that is not an ``.npy``.
* ``video_too_large``, ``frame_too_large``, ``too_many_frames``, ``decode_timeout``
  (:class:`~service.decoder.errors.LimitExceededError`; HTTP 413) -- over one of
  :class:`~service.decoder.limits.DecodeLimits`; each is checked *before* its memory
  or time is spent (see the class).
"""
