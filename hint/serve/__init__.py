"""The wire side of the TorchServe handler: the option table and its limits, request parsing (JSON,
multipart, form, raw bytes, KServe envelopes) and image decoding."""
