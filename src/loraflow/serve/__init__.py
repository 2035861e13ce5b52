"""`loraflow serve`: an HTTP API with a persistent job queue, ComfyUI-compatible workflow routes and a
small web UI, all in one process.

    options.py    ServeOptions (the server's flags, described once)
    paths.py      every file name a client sends is resolved here, inside the allowed folders
    store.py      jobs in SQLite: queue order, status, results; survives restarts
    jobs.py       job kinds (generate, storyboard, train, data-filter, workflow): validate, then run
    worker.py     the one worker thread that owns the accelerator and runs jobs FIFO
    events.py     progress events from the worker to SSE / websocket listeners
    model_cache.py  loaded models kept between jobs (LRU)
    app.py        the FastAPI application: middleware, error mapping, the loraflow routes
    comfy/        ComfyUI API-format workflows: nodes, graph checks, executor, routes, export
    static/       the web UI (plain HTML/JS, no CDN)
"""
