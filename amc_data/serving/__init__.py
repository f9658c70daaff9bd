"""`amc-data serve`: a search page over a trained run, in a browser.

A local web server (Starlette on uvicorn, the `serve` extra) keeps one `Searcher` per run
loaded and serves a page (the package's own HTML, JavaScript and CSS: nothing from the
internet), a JSON API (`/api/search`: the ranking, scores and fields of `search --json`, plus
every region and keyword weight) and the prepared folder's pictures from `--images` folders.

`config` (the options) loads without the server libraries; `app` builds the application,
`pictures` finds and shrinks the pictures, `server` binds and runs it.
"""
