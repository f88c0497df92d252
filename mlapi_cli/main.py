"""`ml-api`: train, inspect, use and delete models of an ml-api service.

Exit codes: 0 ok, 2 usage, 3 not found (404), 4 rejected input (400, 409,
413, 415 and other 4xx; a failed training with --wait), 5 server or network
error (5xx, connection errors, timeouts, a download that fails its SHA-256
check). Errors are one line on stderr.

Everything the server sends is untrusted: it reaches the terminal through
mlapi_cli.output (`visible`, `shown`) and CSV files through
`spreadsheet_cell`.
"""
from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import click
import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor
from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table
from rich.text import Text

from mlapi_cli.output import shown, spreadsheet_cell, visible

EXIT_OK = 0
EXIT_NOT_FOUND = 3
EXIT_REJECTED = 4
EXIT_SERVER = 5

TRAINING = "Model is Training"
READY = "Ready to Use"
FAILED = "Training Failed"

# The service's limits (chalicelib/api.py). API Gateway passes a request to
# Lambda, which takes at most 6 MB, as a JSON event in which the body is an
# escaped string: the body may take 6 MB less 64 KB there (event_bytes).
# Larger datasets go through POST /uploads.
EVENT_BODY_LIMIT = 6 * 1024 * 1024 - 64 * 1024
PREDICT_BODY_BUDGET = 5 * 1024 * 1024  # event bytes: safely under the limit
PREDICT_MAX_ROWS = 20_000  # keeps the answer well under 6 MB for a few classes
UPLOAD_CHUNK = 1024 * 1024
CONNECT_TIMEOUT = 10
READ_TIMEOUT = 120
POLL_INTERVAL = 0.5

stdout = Console()
stderr = Console(stderr=True)


class CliError(Exception):
    """Ends the command: `message` goes to stderr as one line, `code` is the exit code."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def event_bytes(body: bytes) -> int:
    """What a text/csv body takes in the Lambda event, at most: its JSON string
    with everything outside ASCII escaped (the server counts the same way)."""
    return len(json.dumps(body.decode("utf-8", "replace"))) - 2


def _one_line(text: str) -> str:
    return " / ".join(line.strip() for line in text.strip().splitlines() if line.strip())


def _code_for(status: int) -> int:
    if status == 404:
        return EXIT_NOT_FOUND
    if 400 <= status < 500:
        return EXIT_REJECTED
    return EXIT_SERVER


def _http_error(answer: requests.Response) -> CliError:
    text = answer.text
    try:
        document = answer.json()
    except ValueError:
        document = None
    if isinstance(document, dict) and "status" in document and "error" in document:
        text = f"{document['status']}: {document['error']}"
    elif isinstance(document, dict):
        text = json.dumps(document)
    text = _one_line(text) or answer.reason or ""
    return CliError(f"{answer.status_code} {text}".strip(), _code_for(answer.status_code))


@dataclass
class Client:
    url: str
    api_key: str | None
    as_json: bool

    def __post_init__(self):
        self.url = self.url.rstrip("/")
        self.session = requests.Session()
        if self.api_key:
            self.session.headers["X-Api-Key"] = self.api_key

    def request(self, method: str, path: str, *, ok=(200,), absolute: bool = False,
                **kwargs) -> requests.Response:
        """One request; any answer outside `ok` becomes a CliError."""
        url = path if absolute else self.url + path
        kwargs.setdefault("timeout", (CONNECT_TIMEOUT, READ_TIMEOUT))
        try:
            answer = (requests.request(method, url, **kwargs) if absolute
                      else self.session.request(method, url, **kwargs))
        except requests.Timeout as error:
            raise CliError(f"timed out: {method} {url} ({error.__class__.__name__})",
                           EXIT_SERVER) from error
        except requests.ConnectionError as error:
            raise CliError(f"cannot reach {url}: {_one_line(str(error))}", EXIT_SERVER) \
                from error
        except requests.RequestException as error:
            raise CliError(f"{method} {url} failed: {_one_line(str(error))}", EXIT_SERVER) \
                from error
        if answer.status_code not in ok:
            raise _http_error(answer)
        return answer

    def status(self, model_id: str) -> dict:
        return self.request("GET", f"/check_model_status/{model_id}").json()


pass_client = click.make_pass_decorator(Client)


def _print_json(document) -> None:
    click.echo(json.dumps(document, indent=2, sort_keys=False))


# --- the group ----------------------------------------------------------------------

class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except CliError as error:
            click.echo(f"error: {visible(_one_line(str(error)))}", err=True)
            ctx.exit(error.code)


@click.group(cls=_Group)
@click.option("--url", envvar="ML_API_URL", default="http://127.0.0.1:8000",
              show_default=True, help="The service's base URL (env ML_API_URL).")
@click.option("--api-key", envvar="ML_API_KEY", default=None,
              help="Sent as X-Api-Key (env ML_API_KEY).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the server's JSON (status, list, train, delete).")
@click.version_option("0.1.0", prog_name="ml-api")
@click.pass_context
def cli(ctx, url, api_key, as_json):
    """Command-line client for ml-api: train logistic-regression models from
    CSV and use them.

    Exit codes: 0 ok, 2 usage, 3 not found, 4 rejected input (or a failed
    training with --wait), 5 server or network error."""
    ctx.obj = Client(url, api_key, as_json)


# --- train --------------------------------------------------------------------------

class _FormProgress:
    """Advances a progress bar as the multipart form is sent."""

    def __init__(self, progress: Progress, task):
        self.progress, self.task = progress, task

    def __call__(self, monitor: MultipartEncoderMonitor) -> None:
        self.progress.update(self.task, completed=monitor.bytes_read)


def _training_query(header, c, max_iter, class_weight, no_intercept, holdout, ttl_hours):
    query = {}
    if header:
        query["header"] = "true"
    if c is not None:
        query["C"] = repr(c)
    if max_iter is not None:
        query["max_iter"] = str(max_iter)
    if class_weight:
        query["class_weight"] = class_weight
    if no_intercept:
        query["fit_intercept"] = "false"
    if holdout is not None:
        query["holdout"] = repr(holdout)
    if ttl_hours is not None:
        query["ttl_hours"] = repr(ttl_hours)
    return query


def _upload(client: Client, path: Path) -> str:
    """POST /uploads, then the file to its presigned S3 form (the form's fields
    first, the file last) with a progress bar; the upload id."""
    ticket = client.request("POST", "/uploads", ok=(201,)).json()
    size = path.stat().st_size
    if size > ticket["max_bytes"]:
        raise CliError(f"{path} is {size:,} bytes; the service takes uploads of at most "
                       f"{ticket['max_bytes']:,} bytes", EXIT_REJECTED)
    columns = [TextColumn("uploading {task.description}", markup=False), BarColumn(), DownloadColumn(),
               TransferSpeedColumn(), TimeRemainingColumn()]
    with open(path, "rb") as source, Progress(*columns, console=stderr,
                                              transient=True) as progress:
        form = MultipartEncoder(fields=[*ticket["fields"].items(),
                                        ("file", (path.name, source, "text/csv"))])
        task = progress.add_task(path.name, total=form.len)
        monitor = MultipartEncoderMonitor(form, _FormProgress(progress, task))
        client.request(ticket.get("method", "POST"), ticket["url"], absolute=True,
                       ok=(200, 201, 204), data=monitor,
                       headers={"Content-Type": monitor.content_type})
    return ticket["upload_id"]


def _metrics_table(status: dict) -> Table:
    metrics = status.get("metrics") or {}
    table = Table(title=shown(f"{status.get('model_id', '')} metrics "
                              f"({metrics.get('evaluated_on', 'n/a')})"))
    table.add_column("class")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    for row in metrics.get("per_class") or []:
        table.add_row(shown(row.get("class")), *(_fmt(row.get(name))
                                                 for name in ("precision", "recall", "f1",
                                                              "support")))
    table.add_section()
    for name in ("accuracy", "log_loss", "macro_f1"):
        if name in metrics:
            table.add_row(name, _fmt(metrics[name]), "", "", "")
    return table


def _fmt(value) -> Text:
    if isinstance(value, float):
        return Text(f"{value:.4f}")
    return shown("" if value is None else value)


def _wait(client: Client, model_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with stderr.status(shown(f"training {model_id}..."), spinner="dots"):
        while True:
            status = client.status(model_id)
            if status.get("status") != TRAINING:
                return status
            if time.monotonic() > deadline:
                raise CliError(f"model {model_id} still training after {timeout:g} s",
                               EXIT_SERVER)
            time.sleep(POLL_INTERVAL)


@cli.command()
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--header", is_flag=True, help="The first row names the columns.")
@click.option("--C", "c", type=float, default=None, help="Inverse regularisation (1e-6..1e6).")
@click.option("--max-iter", type=int, default=None, help="1..100000.")
@click.option("--class-weight", type=click.Choice(["balanced"]), default=None)
@click.option("--no-intercept", is_flag=True, help="fit_intercept=false.")
@click.option("--holdout", type=float, default=None, help="Fraction 0..0.5 kept for metrics.")
@click.option("--ttl-hours", type=float, default=None, help="Expire the model N hours later.")
@click.option("--wait", is_flag=True, help="Wait for the training and print its metrics.")
@click.option("--timeout", type=float, default=900, show_default=True,
              help="Seconds --wait waits at most.")
@pass_client
def train(client, data, header, c, max_iter, class_weight, no_intercept, holdout, ttl_hours,
          wait, timeout):
    """Train a model on DATA (CSV, label in the last column). Files too large
    for one request to the API (about 5.9 MB) go through POST /uploads."""
    query = _training_query(header, c, max_iter, class_weight, no_intercept, holdout,
                            ttl_hours)
    body = data.read_bytes() if data.stat().st_size <= EVENT_BODY_LIMIT else None
    if body is not None and event_bytes(body) <= EVENT_BODY_LIMIT:
        created = client.request("POST", "/models", ok=(201,), params=query, data=body,
                                 headers={"Content-Type": "text/csv"}).json()
    else:
        upload_id = _upload(client, data)
        created = client.request("POST", "/models", ok=(201,), params=query,
                                 json={"upload_id": upload_id}).json()
    model_id = created["model_id"]
    if not wait:
        _print_json(created) if client.as_json else click.echo(visible(model_id))
        return
    if not client.as_json:
        click.echo(visible(model_id))
    status = _wait(client, model_id, timeout)
    if client.as_json:
        _print_json(status)
    if status.get("status") == FAILED:
        raise CliError(f"{FAILED}: {_one_line(str(status.get('error', '')))}", EXIT_REJECTED)
    if status.get("status") != READY:
        raise CliError(f"unexpected status: {status.get('status')}", EXIT_SERVER)
    if not client.as_json:
        stdout.print(_metrics_table(status))


# --- predict ------------------------------------------------------------------------

def _rows(path: Path | None) -> list[bytes]:
    text = (sys.stdin.buffer.read() if path is None else path.read_bytes())
    return [line for line in text.splitlines() if line.strip()]


def _batches(rows: list[bytes]):
    """Consecutive slices of at most PREDICT_MAX_ROWS rows and PREDICT_BODY_BUDGET
    bytes in the Lambda event (each row's newline is 2 there: \\n)."""
    start = 0
    while start < len(rows):
        end, size = start, 0
        while end < len(rows) and end - start < PREDICT_MAX_ROWS:
            row = event_bytes(rows[end]) + 2
            if end > start and size + row > PREDICT_BODY_BUDGET:
                break
            size += row
            end += 1
        yield start, end
        start = end


def _predict_batch(client: Client, model_id: str, rows: list[bytes]) -> list[tuple]:
    """Predictions for `rows`; on a 413 the batch is halved and each half retried."""
    answer = client.request("POST", f"/models/{model_id}", ok=(200, 202, 413),
                            data=b"\n".join(rows) + b"\n",
                            headers={"Content-Type": "text/csv"})
    if answer.status_code == 413:
        if len(rows) == 1:
            raise _http_error(answer)
        half = len(rows) // 2
        return (_predict_batch(client, model_id, rows[:half])
                + _predict_batch(client, model_id, rows[half:]))
    document = answer.json()
    if answer.status_code == 200 or "predictions" not in document:
        raise CliError(f"model {model_id}: {document.get('status', document)}", EXIT_REJECTED)
    return list(zip(document["predictions"], document["prediction_probability"]))


@cli.command()
@click.argument("model_id", metavar="MODEL")
@click.argument("rows", type=click.Path(exists=True, dir_okay=False, allow_dash=True))
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the predictions here (default: stdout).")
@click.option("--batch", "as_batch", is_flag=True,
              help="Send ROWS (a file) as one batch: uploaded to the service's storage, "
                   "predicted there whatever its size, the results downloaded. Writes "
                   "row,label, then one probability column per class.")
@pass_client
def predict(client, model_id, rows, output, as_batch):
    """Predict ROWS (CSV feature rows, '-' for stdin) with MODEL. Writes one CSV
    line per row: the label, then one probability per class."""
    status = client.status(model_id)
    if status.get("status") == TRAINING:
        raise CliError(f"model {model_id}: {TRAINING}", EXIT_REJECTED)
    if status.get("status") == FAILED:
        raise CliError(f"model {model_id}: {FAILED}: {_one_line(str(status.get('error')))}",
                       EXIT_REJECTED)
    classes = status.get("classes") or []
    if as_batch:
        if rows == "-" or not Path(rows).is_file():
            # The upload form is signed for the file's size, so it must be known first.
            raise click.UsageError(f"--batch needs a regular file (its size goes into the "
                                   f"upload form), not {'stdin' if rows == '-' else 'a pipe'}")
        return _predict_as_batch(client, model_id, Path(rows), output, classes)
    lines = _rows(None if rows == "-" else Path(rows))
    results = []
    for start, end in _batches(lines):
        try:
            results.extend(_predict_batch(client, model_id, lines[start:end]))
        except CliError as error:
            if start:
                raise CliError(f"{error} (in the batch starting at row {start + 1})",
                               error.code) from error
            raise
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([spreadsheet_cell(cell) for cell in
                     ["label", *(f"p_{name}" for name in classes)]])
    for label, probabilities in results:
        writer.writerow([spreadsheet_cell(label), *(repr(float(p)) for p in probabilities)])
    if output is None:
        # A file or pipe gets the data as it is; a terminal sees it, so its
        # control characters are shown, not obeyed.
        text = buffer.getvalue()
        click.echo(visible(text) if sys.stdout.isatty() else text, nl=False)
    else:
        output.write_text(buffer.getvalue())
        click.echo(f"wrote {len(results)} predictions to {visible(output)}", err=True)


def _predict_as_batch(client: Client, model_id: str, path: Path, output: Path | None,
                      classes: list) -> None:
    """POST /uploads and the file to its form, POST /models/{id}/batches, the
    progress from GET /batches/{id}'s rows_done, then the results' download."""
    upload_id = _upload(client, path)
    batch_id = client.request("POST", f"/models/{model_id}/batches", ok=(202,),
                              json={"upload_id": upload_id}).json()["batch_id"]
    click.echo(f"batch {visible(batch_id)}", err=True)
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(),
               TimeRemainingColumn()]
    with Progress(*columns, console=stderr, transient=True) as progress:
        task = progress.add_task("queued", total=path.stat().st_size)
        while True:
            state = client.request("GET", f"/batches/{batch_id}").json()
            progress.update(task, completed=state.get("bytes_done") or 0,
                            description=f"{state.get('rows_done', 0):,} rows predicted")
            if state.get("status") in ("Done", "Failed"):
                break
            time.sleep(POLL_INTERVAL)
    if state["status"] == "Failed":
        raise CliError(f"batch {batch_id} failed: {_one_line(str(state.get('error')))}",
                       EXIT_REJECTED)
    _download_results(client, state["result_url"], output, classes)
    click.echo(f"{state['rows']:,} predictions"
               + (f" written to {visible(output)}" if output else ""), err=True)


def _text_lines(answer: requests.Response):
    """The body's lines with their line breaks (csv joins a quoted field's lines)."""
    pending, decoder = "", codecs.getincrementaldecoder("utf-8")()
    for block in answer.iter_content(UPLOAD_CHUNK):
        pending += decoder.decode(block)  # a character may straddle two blocks
        *lines, pending = pending.split("\n")
        yield from (line + "\n" for line in lines)
    if pending:
        yield pending


def _download_results(client: Client, url: str, output: Path | None, classes: list) -> None:
    """Streams the results CSV to `output` (or stdout). Its only text cells are
    the model's classes: when one of them could run as a formula, every line is
    rewritten with its label cell escaped; otherwise the bytes go as they are."""
    unsafe = any(spreadsheet_cell(label) != label for label in classes if isinstance(label, str))
    answer = client.request("GET", url, absolute=True, stream=True)
    target = open(output, "wb") if output else sys.stdout.buffer
    try:
        if not unsafe:
            decoder = codecs.getincrementaldecoder("utf-8")()
            for block in answer.iter_content(UPLOAD_CHUNK):
                target.write(visible(decoder.decode(block)).encode() if target.isatty()
                             else block)
            return
        text = io.TextIOWrapper(target, encoding="utf-8", newline="", write_through=True)
        writer = csv.writer(text, lineterminator="\n")
        for number, record in enumerate(csv.reader(_text_lines(answer))):
            if number == 0:
                writer.writerow([spreadsheet_cell(cell) for cell in record])
            else:
                writer.writerow([record[0], spreadsheet_cell(record[1]), *record[2:]])
        text.detach()
    finally:
        answer.close()
        if output:
            target.close()
        else:
            target.flush()


# --- status, list, delete, download -------------------------------------------------

@cli.command()
@click.argument("model_id", metavar="MODEL")
@pass_client
def status(client, model_id):
    """Show MODEL's status (and its metrics when it is ready)."""
    answer = client.status(model_id)
    if client.as_json:
        _print_json(answer)
        return
    table = Table(show_header=False, title=shown(model_id))
    table.add_column("fact", style="bold")
    table.add_column("value")
    for key, value in answer.items():
        if key == "metrics":
            continue
        table.add_row(shown(key), shown(value if isinstance(value, str)
                                        else json.dumps(value, ensure_ascii=False)))
    stdout.print(table)
    if answer.get("metrics"):
        stdout.print(_metrics_table(answer))


# `ml-api list`'s columns in the order shown, and the order in which they give
# way on a narrow terminal: the id never does, and is never wrapped, since
# people copy it (nor is the creation time while it is shown).
_LIST_COLUMNS = ("model_id", "status", "created_at", "n_rows", "n_features", "accuracy")
_LIST_PRIORITY = ("model_id", "status", "accuracy", "created_at", "n_rows", "n_features")
_UNWRAPPED = ("model_id", "created_at")
# The words of `list --status` (and of the dashboard's badges), shorter than the seed's texts.
_STATUS_WORDS = {TRAINING: "training", READY: "ready", FAILED: "failed"}


def _list_table(models: list[dict], width: int) -> Table | None:
    """The widest table of models that fits `width` columns without wrapping
    an id; None if not even the ids alone fit."""
    rows = [{"model_id": shown(model.get("model_id")),
             "status": shown(_STATUS_WORDS.get(model.get("status"), model.get("status"))),
             "created_at": shown(model.get("created_at") or ""),
             "n_rows": _fmt(model.get("n_rows")), "n_features": _fmt(model.get("n_features")),
             "accuracy": _fmt((model.get("metrics") or {}).get("accuracy"))}
            for model in models]
    for kept in range(len(_LIST_PRIORITY), 0, -1):
        names = [name for name in _LIST_COLUMNS if name in _LIST_PRIORITY[:kept]]
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
        for name in names:
            widest = max([len(name), *(row[name].cell_len for row in rows)])
            table.add_column(name, justify="right" if name.startswith(("n_", "acc")) else "left",
                             no_wrap=name in _UNWRAPPED,
                             min_width=widest if name in _UNWRAPPED else None)
        for row in rows:
            table.add_row(*(row[name] for name in names))
        unlimited = stdout.options.update_width(max(width, 10_000))
        if Measurement.get(stdout, unlimited, table).minimum <= width:
            return table
    return None


@cli.command(name="list")
@click.option("--status", "state", type=click.Choice(["training", "ready", "failed"]),
              default=None, help="Only models in this state.")
@click.option("--all", "everything", is_flag=True, help="Follow next tokens to the end.")
@click.option("--limit", type=click.IntRange(1, 100), default=None, help="Models per page.")
@pass_client
def list_models(client, state, everything, limit):
    """List models, newest first (one page unless --all)."""
    params = {}
    if state:
        params["status"] = state
    if limit:
        params["limit"] = str(limit)
    models, token = [], None
    while True:
        page = client.request("GET", "/models",
                              params={**params, **({"next": token} if token else {})}).json()
        models.extend(page.get("models") or [])
        token = page.get("next")
        if not everything or not token:
            break
    if client.as_json:
        _print_json({"models": models, "next": token})
        return
    table = _list_table(models, stdout.width)
    if table is not None:
        stdout.print(table)
    else:  # narrower than an id: one id a line, which the terminal may wrap but not split
        for model in models:
            stdout.print(shown(model.get("model_id")), soft_wrap=True)
    if token:
        click.echo("more models follow: use --all", err=True)


@cli.command()
@click.argument("model_id", metavar="MODEL")
@pass_client
def delete(client, model_id):
    """Delete MODEL (its status, dataset and artifacts)."""
    client.request("DELETE", f"/models/{model_id}", ok=(204,))
    if client.as_json:
        _print_json({"model_id": model_id, "deleted": True})
    else:
        click.echo(f"deleted {model_id}")


@cli.command()
@click.argument("model_id", metavar="MODEL")
@click.argument("destination", type=click.Path(dir_okay=False, path_type=Path))
@pass_client
def download(client, model_id, destination):
    """Download MODEL's pickled scikit-learn pipeline to DESTINATION, checked
    against the SHA-256 the service gives: a file that does not match is
    never written (an existing DESTINATION stays as it was)."""
    answer = client.request("GET", f"/models/{model_id}/artifact").json()
    if "url" not in answer:
        raise CliError(f"model {model_id}: {answer.get('status', answer)}", EXIT_REJECTED)
    expected = answer.get("sha256")
    if not (isinstance(expected, str) and _SHA256.fullmatch(expected)):
        raise CliError(f"the service gave no SHA-256 for {model_id}'s artifact, so the "
                       "download cannot be checked; nothing written", EXIT_SERVER)
    fetched = client.request("GET", answer["url"], absolute=True, stream=True)
    actual = _verified_write(fetched, destination, expected)
    if client.as_json:
        _print_json({**answer, "sha256": actual, "path": str(destination)})
    else:
        click.echo(f"wrote {visible(destination)} ({destination.stat().st_size} bytes, "
                   f"SHA-256 {actual})")


_SHA256 = re.compile(r"[0-9a-f]{64}")


def _verified_write(fetched: requests.Response, destination: Path, expected: str) -> str:
    """Streams the download into a temporary file beside `destination` (so the
    rename is atomic), hashing it; renames it into place only if its SHA-256 is
    `expected`, else deletes it. Returns the digest."""
    digest = hashlib.sha256()
    temporary = tempfile.NamedTemporaryFile(dir=destination.parent, prefix=f".{destination.name}.",
                                            suffix=".part", delete=False)
    try:
        with temporary:
            try:
                for chunk in fetched.iter_content(UPLOAD_CHUNK):
                    digest.update(chunk)
                    temporary.write(chunk)
            except requests.RequestException as error:
                raise CliError(f"the download broke off: {_one_line(str(error))}; nothing "
                               "written", EXIT_SERVER) from error
        if digest.hexdigest() != expected:
            raise CliError(f"the download's SHA-256 is {digest.hexdigest()}, not {expected} as "
                           "the service says: it was changed in storage or on the way; "
                           f"{destination} not written", EXIT_SERVER)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary.name, 0o666 & ~umask)  # as an ordinary new file, not 0600
        os.replace(temporary.name, destination)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary.name)
        raise
    return digest.hexdigest()


if __name__ == "__main__":
    cli()
