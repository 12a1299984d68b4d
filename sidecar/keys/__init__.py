"""One key state per pod: the fetcher (`sidecar.fetcher`, one per provider) is the only writer; `hub` runs the
fetchers and answers asks; `view` is what a worker's requests read; `channel` carries states and asks between
them (in-process with one worker, a Unix socket with several); `state` is what travels and what survives."""
