"""Planning from the data, as nnU-Net plans: a streaming dataset fingerprint (`fingerprint`), the
published rules that turn it into spacing, normalisation, window, batch and topology (`rules`),
and a plan for a target device and model family, CNN or transformer (`plan`)."""
