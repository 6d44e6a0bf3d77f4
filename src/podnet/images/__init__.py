"""Container images without a registry: the machine-wide cache and the built-in images.

`store.ImageStore(root).resolve(ref)` turns any image reference into an `Image` (root
filesystem + entrypoint, cmd, env, working dir, read-only host binds); `refs` normalises
references the way Docker does; `builtin` builds busybox, agnhost, nginx, pause, coredns and
jessie-dnsutils from what the machine has; `model` holds the values both use
(`ImageConfig`, `BindMount`, `BuiltinImage`, `ImageError`), so the store imports `builtin`
and nothing imports back;
`agnhost` is podnet's agnhost (the e2e test image's network subcommands), run by the
built-in agnhost image. `podnet image import/list` (cli/image.py) manages imports.
"""
