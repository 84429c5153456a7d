"""Bytes in and out: streamed multipart uploads, image decoding under caps, fitting to the
working size, and encoding results."""
