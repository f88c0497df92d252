"""`ml-api`: train, inspect, use and delete models of an ml-api service.

Exit codes: 0 ok, 2 usage, 3 not found (404), 4 rejected input (400, 409,
413, 415 and other 4xx; a failed training with --wait), 5 server or network
error (5xx, connection errors, timeouts). Errors are one line on stderr.
"""
from __future__ import annotations

import csv
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import requests
from requests_toolbelt import MultipartEncoder, MultipartEncoderMonitor
from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn,
                           TimeRemainingColumn, TransferSpeedColumn)
from rich.table import Table

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
            click.echo(f"error: {error}", err=True)
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
    columns = [TextColumn("uploading {task.description}"), BarColumn(), DownloadColumn(),
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
    table = Table(title=f"{status.get('model_id', '')} metrics "
                        f"({metrics.get('evaluated_on', 'n/a')})")
    table.add_column("class")
    for name in ("precision", "recall", "f1", "support"):
        table.add_column(name, justify="right")
    for row in metrics.get("per_class") or []:
        table.add_row(str(row.get("class")), *(_fmt(row.get(name))
                                                for name in ("precision", "recall", "f1",
                                                             "support")))
    table.add_section()
    for name in ("accuracy", "log_loss", "macro_f1"):
        if name in metrics:
            table.add_row(name, _fmt(metrics[name]), "", "", "")
    return table


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "" if value is None else str(value)


def _wait(client: Client, model_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    with stderr.status(f"training {model_id}...", spinner="dots"):
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
        _print_json(created) if client.as_json else click.echo(model_id)
        return
    if not client.as_json:
        click.echo(model_id)
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
@pass_client
def predict(client, model_id, rows, output):
    """Predict ROWS (CSV feature rows, '-' for stdin) with MODEL. Writes one CSV
    line per row: the label, then one probability per class."""
    status = client.status(model_id)
    if status.get("status") == TRAINING:
        raise CliError(f"model {model_id}: {TRAINING}", EXIT_REJECTED)
    if status.get("status") == FAILED:
        raise CliError(f"model {model_id}: {FAILED}: {_one_line(str(status.get('error')))}",
                       EXIT_REJECTED)
    classes = status.get("classes") or []
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
    writer.writerow(["label", *(f"p_{name}" for name in classes)])
    for label, probabilities in results:
        writer.writerow([label, *(repr(float(p)) for p in probabilities)])
    if output is None:
        click.echo(buffer.getvalue(), nl=False)
    else:
        output.write_text(buffer.getvalue())
        click.echo(f"wrote {len(results)} predictions to {output}", err=True)


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
    table = Table(show_header=False, title=model_id)
    table.add_column("fact", style="bold")
    table.add_column("value")
    for key, value in answer.items():
        if key == "metrics":
            continue
        table.add_row(key, value if isinstance(value, str) else json.dumps(value))
    stdout.print(table)
    if answer.get("metrics"):
        stdout.print(_metrics_table(answer))


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
    table = Table()
    for name in ("model_id", "status", "created_at", "n_rows", "n_features", "accuracy"):
        # ids and times are copied from here: never shortened with an ellipsis
        table.add_column(name, justify="right" if name.startswith(("n_", "acc")) else "left",
                         overflow="fold")
    for model in models:
        accuracy = (model.get("metrics") or {}).get("accuracy")
        table.add_row(str(model.get("model_id")), str(model.get("status")),
                      str(model.get("created_at") or ""), _fmt(model.get("n_rows")),
                      _fmt(model.get("n_features")), _fmt(accuracy))
    stdout.print(table)
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
    """Download MODEL's pickled scikit-learn pipeline to DESTINATION.
    Check its signature before unpickling it (see the README)."""
    answer = client.request("GET", f"/models/{model_id}/artifact").json()
    if "url" not in answer:
        raise CliError(f"model {model_id}: {answer.get('status', answer)}", EXIT_REJECTED)
    fetched = client.request("GET", answer["url"], absolute=True, stream=True)
    partial = destination.with_name(destination.name + ".part")
    with open(partial, "wb") as target:
        for chunk in fetched.iter_content(UPLOAD_CHUNK):
            target.write(chunk)
    os.replace(partial, destination)
    signature = fetched.headers.get("x-amz-meta-hmac-sha256")
    if client.as_json:
        _print_json({**answer, "path": str(destination), "hmac_sha256": signature})
    else:
        click.echo(f"wrote {destination} ({destination.stat().st_size} bytes)")


if __name__ == "__main__":
    cli()
