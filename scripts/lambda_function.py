"""Step 3: the handler. One FITS in, one Parquet catalog out.

On AWS Lambda this file is the entry point (``lambda_function.lambda_handler``); locally
``invoke_lambda.py --backend local`` calls the same core in a process pool. The numbered
comments are walked through in the README.

Events it accepts (details and the plumbing behind each numbered step: skysurvey/handler.py):
- direct: ``{"bucket": "...", "key": "images/x.fits", "catalog_bucket": "..."}``; a reply;
- S3 notifications: ``{"Records": [...]}`` (URL-encoded keys); a failed image raises, so that
  Lambda retries it and then sends the event to the failed-events queue;
- ``{"task": "objects_unit" | "forced_image", ...}`` from build_objects.py and
  forced_photometry.py with ``--backend lambda``.
"""

from __future__ import annotations

import json
import logging
import sys

try:
    from skysurvey import handler
    from skysurvey.athena import after_write
    from skysurvey.config import get_setting
    from skysurvey.errors import SkySurveyError
    from skysurvey.pipeline import catalog_image, make_reply
    from skysurvey.storage import open_store
except ModuleNotFoundError as exc:
    if __name__ != "__main__":  # on Lambda: the import error as it is
        raise
    raise SystemExit(f"{exc}: run .venv/bin/python {' '.join(sys.argv)} (or `make install` "
                     "first)") from None

log = logging.getLogger("skysurvey.handler")
if not log.handlers:  # Lambda's root logger already writes to CloudWatch; locally, stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
log.setLevel(logging.INFO)


def lambda_handler(event: dict, context=None) -> dict:
    # 0. The same function also runs one unit of build_objects.py or one image of
    #    forced_photometry.py (--backend lambda): those events name their task.
    other = handler.other_task(event)
    if other is not None:
        return other
    # 1. Parse the event: a direct invocation or an S3 notification (URL-encoded keys).
    try:
        targets = handler.parse_event(event)
    except (KeyError, TypeError, ValueError) as exc:
        reply = handler.bad_event_reply(exc)
        log.info(json.dumps(reply))
        return reply
    replies = []
    for raw_uri, key, catalog_uri in targets:
        # 2. Open the buckets (clients are created once per container and cached).
        catalog = catalog_uri or get_setting("BUCKET_CATALOG")
        try:
            raw_store = open_store(raw_uri)
            catalog_store = open_store(handler.store_uri(catalog))
            config = handler.pipeline_config(event)
        except SkySurveyError as exc:
            reply = make_reply(key, "error", error=str(exc))
        else:
            # 3. Read, detect, measure, write: the shared core; transient AWS errors raise
            #    so that Lambda's own retry takes over.
            reply = catalog_image(raw_store, key, catalog_store, config,
                                  raise_transient=True)
            # 3b. On AWS, register the new band/night with Athena (Glue partitions) when the
            #     function has an ATHENA_DATABASE (setup_aws.py sets it).
            reply = after_write(reply)
        # 4. One JSON line per image for CloudWatch Logs Insights.
        log.info(json.dumps(reply))
        replies.append(reply)
    # 5. Reply: one dict for one image, a list under "results" for several; an S3-triggered
    #    image that failed raises instead, so that it reaches the failed-events queue.
    return handler.reply(event, replies)


def build_parser():
    """``python scripts/lambda_function.py --help``: what this file is and how it is called."""
    import argparse

    from skysurvey import cli

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=cli.HelpFormatter,
        epilog="examples:\n  python scripts/lambda_function.py --event "
               "'{\"bucket\": \"data/raw/images\", \"key\": \"sky_g_001.fits\"}'\n"
               "  python scripts/invoke_lambda.py   # every image, the usual way")
    cli.add_version(parser)
    parser.add_argument("--event", default=None,
                        help="run the handler once, here, on this JSON event and print its reply")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Without --event, print the help: on AWS, Lambda calls :func:`lambda_handler` itself."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.event is None:
        parser.print_help()
        return 0
    try:
        event = json.loads(args.event)
    except json.JSONDecodeError as exc:
        parser.error(f"--event is not JSON: {exc}")
    reply = lambda_handler(event)
    print(json.dumps(reply, indent=2))
    return 0 if reply.get("status") == "ok" else 1


if __name__ == "__main__":
    from skysurvey import cli

    raise SystemExit(cli.run(main))
